"""Make the demo image dataset data/screens: synthetic app screenshots that route to LoRA adapters.

    python -m scripts.make_screens                           # data/screens, seed 0
    python -m scripts.make_screens --out /tmp/s --per-label 40 --seed 3
    python -m scripts.make_screens --new-class ocr_document --count 20 --out data/screens   # add a class

Routes (taxonomy.yaml): calendar_navigation (month grid, week view, date picker), claim_window
(editing a claim's dates and amounts), provider_selection (a list of provider cards, a map with
pins), and the reject route other (login, settings, chat, photo gallery, article). The other
screens are chosen to look like the routed ones (a gallery is a grid like a month, a login is a
form, a chat is a list of rows), every screen draws its colours, dark or light mode, sizes
(phone, tablet, desktop), fonts and layout from the same distributions, and each image is cropped,
rescaled and noised: colour alone does not tell the routes apart. Seeded and deterministic: the
same seed and Pillow version give the same bytes. Writes train/valid/test.jsonl rows
{"image": "images/<split>/<label>-<n>.png" (or .jpg), "label": ...}, images/ and taxonomy.yaml.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw, ImageFont

ROUTES = {
    "calendar_navigation": ("Move between days, weeks and months; pick a date.", "acme/lora-calendar-nav",
                            ["calendar_month", "calendar_week", "date_picker"]),
    "claim_window": ("Edit a claim: service dates, the claim window, amounts and codes.", "acme/lora-claim-edit",
                     ["claim_form"]),
    "provider_selection": ("Choose a care provider from a list or a map.", "acme/lora-provider-select",
                           ["provider_list", "provider_map"]),
    "other": ("Any other screen: no adapter, the general model answers.", "acme/base-vlm",
              ["login", "settings", "chat", "gallery", "article"]),
}
SPLITS = {"train": 0.6, "valid": 0.15, "test": 0.25}
WORDS = ("care plan visit note record member policy review status update account health coverage benefit "
         "service request appointment summary detail history message payment network office").split()
NAMES = "Adams Baker Chen Diaz Evans Fischer Garcia Haddad Ito Jones Kim Lopez Murphy Novak Okafor Patel".split()
MONTHS = "January February March April May June July August September October November December".split()


@functools.lru_cache(maxsize=None)
def font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)  # bundled with Pillow: same glyphs on every machine


def theme(rng: random.Random) -> dict:
    """Colours from one distribution for every screen type: dark or light, any accent hue."""
    dark = rng.random() < 0.35
    base = rng.randint(15, 45) if dark else rng.randint(225, 255)
    tint = [max(0, min(255, base + rng.randint(-12, 12))) for _ in range(3)]
    accent = tuple(rng.randint(30, 230) for _ in range(3))
    card = tuple(max(0, min(255, c + (18 if dark else -14))) for c in tint)
    return {"bg": tuple(tint), "fg": (230, 230, 230) if dark else (30, 30, 30), "muted": (140, 140, 140),
            "accent": accent, "card": card, "dark": dark}


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize()


class Screen:
    """A canvas with a status bar and an app bar; `body` is the area below them."""

    def __init__(self, rng: random.Random, title: str) -> None:
        self.rng, self.t = rng, theme(rng)
        kind = rng.choices(["phone", "tablet", "desktop"], [0.55, 0.2, 0.25])[0]
        self.w, self.h = {"phone": (rng.randint(340, 430), rng.randint(680, 900)),
                          "tablet": (rng.randint(700, 820), rng.randint(950, 1100)),
                          "desktop": (rng.randint(960, 1366), rng.randint(600, 820))}[kind]
        self.image = Image.new("RGB", (self.w, self.h), self.t["bg"])
        self.d = ImageDraw.Draw(self.image)
        self.s = rng.uniform(0.85, 1.25) * (1.0 if kind == "phone" else 1.15)  # type scale
        top = 0
        if kind != "desktop":
            self.text((10, 4), f"{rng.randint(1, 12)}:{rng.randint(0, 59):02d}", 12)
            top = int(22 * self.s)
        bar = int(rng.randint(44, 64) * self.s)
        fill = self.t["accent"] if rng.random() < 0.5 else self.t["card"]
        self.d.rectangle([0, top, self.w, top + bar], fill=fill)
        self.text((int(16 * self.s) + (28 if rng.random() < 0.5 else 0), top + bar // 3), title, 18)
        self.top = top + bar + int(rng.randint(8, 20) * self.s)
        self.margin = int(rng.randint(10, 28) * self.s)

    def text(self, xy, value: str, size: int, fill=None) -> None:
        self.d.text(xy, value, font=font(max(8, int(size * self.s))), fill=fill or self.t["fg"])

    def box(self, x0, y0, x1, y1, fill=None, outline=None, radius=None) -> None:
        r = int(self.rng.choice([0, 4, 8, 12]) * self.s) if radius is None else radius
        self.d.rounded_rectangle([x0, y0, x1, y1], r, fill=fill, outline=outline)

    def button(self, x, y, label: str, filled: bool = True) -> int:
        w, h = int((len(label) * 9 + 30) * self.s), int(36 * self.s)
        self.box(x, y, x + w, y + h, fill=self.t["accent"] if filled else None, outline=self.t["accent"])
        self.text((x + int(14 * self.s), y + int(9 * self.s)), label, 14)
        return x + w


# ---- the routed screens -------------------------------------------------------------------------

def calendar_month(s: Screen) -> None:
    rng, m = s.rng, s.margin
    s.text((m, s.top), f"< {rng.choice(MONTHS)} {rng.randint(2023, 2027)} >", 20)
    cols, rows = 7, rng.choice([5, 6])
    top = s.top + int(40 * s.s)
    cw, ch = (s.w - 2 * m) / cols, min((s.h - top - m) / (rows + 1), (s.w - 2 * m) / cols * 1.1)
    for c, day in enumerate("MTWTFSS"):
        s.text((m + c * cw + cw / 3, top), day, 12, s.t["muted"])
    start, chosen = rng.randint(0, 6), rng.randint(1, 28)
    for i in range(rows * cols):
        r, c, n = i // cols, i % cols, i - start + 1
        x, y = m + c * cw, top + (r + 1) * ch
        if rng.random() < 0.4:
            s.box(x + 2, y + 2, x + cw - 2, y + ch - 2, outline=s.t["muted"], radius=0)
        if 1 <= n <= 31:
            if n == chosen:
                s.d.ellipse([x + cw * 0.2, y + ch * 0.1, x + cw * 0.8, y + ch * 0.1 + cw * 0.6], fill=s.t["accent"])
            s.text((x + cw * 0.3, y + ch * 0.2), str(n), 13)
            if rng.random() < 0.2:
                s.d.ellipse([x + cw / 2 - 3, y + ch * 0.75, x + cw / 2 + 3, y + ch * 0.75 + 6], fill=s.t["accent"])


def calendar_week(s: Screen) -> None:
    rng, m = s.rng, s.margin
    s.text((m, s.top), f"< Week {rng.randint(1, 52)} >", 18)
    top, left = s.top + int(36 * s.s), m + int(40 * s.s)
    cw = (s.w - left - m) / 7
    hours = rng.randint(8, 12)
    rh = (s.h - top - m) / hours
    for h in range(hours):
        y = top + h * rh
        s.text((m, y), f"{7 + h}:00", 10, s.t["muted"])
        s.d.line([left, y, s.w - m, y], fill=s.t["muted"])
    for c in range(8):
        s.d.line([left + c * cw, top, left + c * cw, s.h - m], fill=s.t["muted"])
    for _ in range(rng.randint(3, 9)):
        c, h = rng.randint(0, 6), rng.randint(0, hours - 2)
        s.box(left + c * cw + 3, top + h * rh + 2, left + (c + 1) * cw - 3, top + (h + rng.randint(1, 2)) * rh - 2,
              fill=s.t["accent"])


def date_picker(s: Screen) -> None:
    settings(s)  # a dialog over another screen
    rng = s.rng
    w = min(s.w - 40, int(rng.randint(300, 380) * s.s))
    x0, y0 = (s.w - w) // 2, s.h // 2 - w // 2
    s.box(x0, y0, x0 + w, y0 + w + 60, fill=s.t["card"], outline=s.t["muted"])
    s.text((x0 + 16, y0 + 12), f"{rng.choice(MONTHS)[:3]} {rng.randint(1, 28)}, {rng.randint(2023, 2027)}", 20)
    cw = (w - 20) / 7
    for i in range(35):
        x, y = x0 + 10 + (i % 7) * cw, y0 + 60 + (i // 7) * cw
        if i == rng.randint(0, 34):
            s.d.ellipse([x, y, x + cw - 4, y + cw - 4], fill=s.t["accent"])
        s.text((x + cw / 4, y + cw / 4), str(i + 1 if i < 31 else i - 30), 11)
    s.button(x0 + w - int(150 * s.s), y0 + w + 15, "OK")


def claim_form(s: Screen) -> None:
    rng, m = s.rng, s.margin
    s.text((m, s.top), f"Claim #{rng.randint(10000, 99999)}", 20)
    s.box(s.w - m - int(90 * s.s), s.top, s.w - m, s.top + int(26 * s.s), fill=s.t["accent"])
    s.text((s.w - m - int(82 * s.s), s.top + 5), rng.choice(["Draft", "Open", "Pending"]), 12)
    y = s.top + int(44 * s.s)
    fields = ["Service from", "Service to", "Claim window", "Amount", "Diagnosis code", "Provider", "Notes"]
    for label in rng.sample(fields, rng.randint(4, 7)):
        s.text((m, y), label, 12, s.t["muted"])
        fh = int(34 * s.s)
        half = label in ("Service from", "Claim window")
        x1 = (s.w // 2 - 6) if half else s.w - m
        s.box(m, y + int(18 * s.s), x1, y + int(18 * s.s) + fh, outline=s.t["muted"])
        value = f"{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}/{rng.randint(2023, 2026)}" if "Se" in label \
            or "window" in label else (f"${rng.randint(20, 5000)}.{rng.randint(0, 99):02d}" if label == "Amount"
                                       else words(rng, 2))
        s.text((m + 8, y + int(26 * s.s)), value, 13)
        if half:
            s.box(s.w // 2 + 6, y + int(18 * s.s), s.w - m, y + int(18 * s.s) + fh, outline=s.t["muted"])
            s.text((s.w // 2 + 14, y + int(26 * s.s)), f"{rng.randint(1, 12):02d}/{rng.randint(1, 28):02d}", 13)
        y += int(70 * s.s)
        if y > s.h - 120 * s.s:
            break
    x = s.button(m, min(y + 10, s.h - int(50 * s.s)), "Save")
    s.button(x + 12, min(y + 10, s.h - int(50 * s.s)), "Cancel", filled=False)


def provider_list(s: Screen) -> None:
    rng, m = s.rng, s.margin
    s.box(m, s.top, s.w - m, s.top + int(36 * s.s), outline=s.t["muted"], radius=int(18 * s.s))
    s.text((m + 14, s.top + 9), "Search providers", 13, s.t["muted"])
    y, ch = s.top + int(52 * s.s), int(rng.randint(80, 100) * s.s)
    while y + ch < s.h - m:
        s.box(m, y, s.w - m, y + ch - 8, fill=s.t["card"])
        r = int(22 * s.s)
        s.d.ellipse([m + 10, y + 12, m + 10 + 2 * r, y + 12 + 2 * r], fill=tuple(rng.randint(60, 220) for _ in range(3)))
        s.text((m + 20 + 2 * r, y + 10), f"Dr. {rng.choice(NAMES)}", 15)
        s.text((m + 20 + 2 * r, y + 10 + int(22 * s.s)), f"{words(rng, 1)} · {rng.randint(1, 30)} mi", 12, s.t["muted"])
        s.text((m + 20 + 2 * r, y + 10 + int(40 * s.s)), "★" * rng.randint(3, 5), 12, s.t["accent"])
        s.button(s.w - m - int(90 * s.s), y + ch // 2 - int(22 * s.s), "Select", filled=rng.random() < 0.5)
        y += ch


def provider_map(s: Screen) -> None:
    rng, m = s.rng, s.margin
    split = int(s.h * rng.uniform(0.45, 0.65))
    s.d.rectangle([0, s.top, s.w, split], fill=tuple(rng.randint(170, 225) for _ in range(3)))
    for _ in range(rng.randint(6, 14)):  # streets
        if rng.random() < 0.5:
            y = rng.randint(s.top, split)
            s.d.line([0, y, s.w, y + rng.randint(-40, 40)], fill=(250, 250, 250), width=rng.randint(3, 8))
        else:
            x = rng.randint(0, s.w)
            s.d.line([x, s.top, x + rng.randint(-40, 40), split], fill=(250, 250, 250), width=rng.randint(3, 8))
    for _ in range(rng.randint(3, 8)):  # provider pins
        x, y = rng.randint(20, s.w - 20), rng.randint(s.top + 20, split - 20)
        s.d.polygon([(x, y), (x - 9, y - 18), (x + 9, y - 18)], fill=s.t["accent"])
        s.d.ellipse([x - 10, y - 30, x + 10, y - 10], fill=s.t["accent"])
    y = split + 10
    while y + 60 * s.s < s.h - m:
        s.text((m, y), f"Dr. {rng.choice(NAMES)} · {rng.randint(1, 30)} mi", 14)
        s.button(s.w - m - int(90 * s.s), y - 6, "Select", filled=False)
        y += int(56 * s.s)


# ---- other screens, chosen to look like the routed ones ------------------------------------------

def login(s: Screen) -> None:
    rng, cx = s.rng, s.w // 2
    r = int(36 * s.s)
    s.d.ellipse([cx - r, s.top + 30, cx + r, s.top + 30 + 2 * r], fill=s.t["accent"])
    y = s.top + 60 + 2 * r
    for label in ["Email", "Password"] + (["Confirm password"] if rng.random() < 0.4 else []):
        s.text((s.margin, y), label, 12, s.t["muted"])
        s.box(s.margin, y + int(18 * s.s), s.w - s.margin, y + int(52 * s.s), outline=s.t["muted"])
        y += int(70 * s.s)
    s.button(s.margin, y + 10, rng.choice(["Sign in", "Log in", "Continue"]))


def settings(s: Screen) -> None:
    rng, m, y = s.rng, s.margin, s.top
    while y + 50 * s.s < s.h - m:
        s.text((m, y + 10), words(rng, rng.randint(1, 3)), 14)
        if rng.random() < 0.5:  # a toggle
            x = s.w - m - int(44 * s.s)
            on = rng.random() < 0.5
            s.box(x, y + 8, x + int(44 * s.s), y + 8 + int(24 * s.s), fill=s.t["accent"] if on else s.t["muted"],
                  radius=int(12 * s.s))
        else:
            s.text((s.w - m - 20, y + 10), ">", 14, s.t["muted"])
        y += int(rng.randint(44, 60) * s.s)
        s.d.line([m, y, s.w - m, y], fill=s.t["muted"])


def chat(s: Screen) -> None:
    rng, m, y = s.rng, s.margin, s.top
    while y + 60 * s.s < s.h - int(70 * s.s):
        mine = rng.random() < 0.5
        w = int(s.w * rng.uniform(0.35, 0.7))
        h = int(rng.randint(34, 70) * s.s)
        x0 = s.w - m - w if mine else m
        s.box(x0, y, x0 + w, y + h, fill=s.t["accent"] if mine else s.t["card"], radius=int(14 * s.s))
        s.text((x0 + 10, y + 8), words(rng, rng.randint(2, 5)), 13)
        y += h + int(12 * s.s)
    s.box(m, s.h - int(56 * s.s), s.w - m, s.h - int(16 * s.s), outline=s.t["muted"], radius=int(20 * s.s))


def gallery(s: Screen) -> None:
    rng, m = s.rng, s.margin
    cols = rng.choice([3, 4, 5])
    cw = (s.w - 2 * m) / cols
    y, i = s.top, 0
    while y + cw < s.h:
        x = m + (i % cols) * cw
        s.box(x + 2, y + 2, x + cw - 2, y + cw - 2, fill=tuple(rng.randint(40, 230) for _ in range(3)), radius=0)
        i += 1
        if i % cols == 0:
            y += cw


def article(s: Screen) -> None:
    rng, m, y = s.rng, s.margin, s.top
    s.text((m, y), words(rng, rng.randint(3, 6)), 22)
    y += int(40 * s.s)
    if rng.random() < 0.5:
        s.box(m, y, s.w - m, y + int(s.w * 0.4), fill=tuple(rng.randint(60, 200) for _ in range(3)))
        y += int(s.w * 0.4) + 12
    while y < s.h - m:
        s.text((m, y), " ".join(rng.choice(WORDS) for _ in range(int((s.w - 2 * m) / (7 * s.s * 8)))), 13)
        y += int(20 * s.s)


def ocr_document(s: Screen) -> None:
    """A scanned paper document: the class `--new-class ocr_document` adds (an OCR adapter)."""
    rng = s.rng
    page = (245, 242, 232)
    x0, y0 = s.margin, s.top
    s.d.rectangle([x0, y0, s.w - s.margin, s.h - s.margin], fill=page)
    y = y0 + 20
    while y < s.h - s.margin - 20:
        s.d.text((x0 + 16, y), " ".join(rng.choice(WORDS) for _ in range(8)), font=font(11), fill=(50, 50, 50))
        y += 16


SCREENS = {f.__name__: f for f in (calendar_month, calendar_week, date_picker, claim_form, provider_list,
                                   provider_map, login, settings, chat, gallery, article, ocr_document)}
TITLES = {"calendar_month": "Calendar", "calendar_week": "Schedule", "date_picker": "Settings",
          "claim_form": "Edit claim", "provider_list": "Find care", "provider_map": "Nearby", "login": "Welcome",
          "settings": "Settings", "chat": "Messages", "gallery": "Photos", "article": "News",
          "ocr_document": "Scan"}


def render(label: str, seed: int) -> tuple[Image.Image, str]:
    rng = random.Random(seed)
    screen = Screen(rng, TITLES[label] if rng.random() < 0.6 else words(rng, 1))
    SCREENS[label](screen)
    return degrade(screen.image, rng, np.random.default_rng(seed))


def degrade(image: Image.Image, rng: random.Random, nrng: np.random.Generator) -> tuple[Image.Image, str]:
    """Crop and rescale; then either sensor-like noise stored as JPEG (a photo or a re-shared
    screenshot) or a clean PNG (a raw capture). Returns the image and its file suffix."""
    w, h = image.size
    cw, ch = int(w * rng.uniform(0.85, 1.0)), int(h * rng.uniform(0.85, 1.0))
    x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
    image = image.crop((x, y, x + cw, y + ch))
    scale = rng.uniform(0.45, 0.85)
    image = image.resize((max(64, int(cw * scale)), max(64, int(ch * scale))), Image.BILINEAR)
    if rng.random() < 0.4:
        return image, ".png"
    noise = nrng.normal(0, rng.uniform(1, 8), (image.size[1], image.size[0], 3))
    return Image.fromarray(np.clip(np.asarray(image, np.float32) + noise, 0, 255).astype(np.uint8)), ".jpg"


def write_split(out: Path, split: str, labels: list[str], count: int, seed: int) -> list[dict]:
    rows = []
    for label in labels:
        for n in range(count):
            # Seeds per (split, label, n): a split's images do not depend on the other splits' sizes.
            image, suffix = render(label, hash_seed(seed, split, label, n))
            name = f"images/{split}/{label}-{n:04d}{suffix}"
            image.save(out / name, quality=random.Random(n).randint(55, 90)) if suffix == ".jpg" else image.save(out / name)
            rows.append({"image": name, "label": label})
    random.Random(seed).shuffle(rows)
    return rows


def hash_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "big")


def taxonomy() -> dict:
    return {"reject": "other", "routes": [
        {"name": name, "description": description, "target": target, "labels": labels}
        for name, (description, target, labels) in ROUTES.items()]}


def main() -> None:
    parser = argparse.ArgumentParser(description="Make the synthetic screenshot dataset (seeded).")
    parser.add_argument("--out", default="data/screens", help="dataset folder to write")
    parser.add_argument("--per-label", type=int, default=80, help="images per fine label, all splits together")
    parser.add_argument("--seed", type=int, default=0, help="one seed for every image")
    parser.add_argument("--new-class", help="add this screen type (e.g. ocr_document) to an existing dataset: "
                        "--count images in train.jsonl, a quarter as many in valid and test, a taxonomy route")
    parser.add_argument("--count", type=int, default=20, help="training images of --new-class")
    args = parser.parse_args()
    out = Path(args.out)
    if args.new_class:
        return add_class(out, args.new_class, args.count, args.seed)
    labels = [label for _, _, group in ROUTES.values() for label in group]
    for split, share in SPLITS.items():
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        rows = write_split(out, split, labels, max(2, round(args.per_label * share)), args.seed)
        (out / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{out / split}.jsonl: {len(rows)} images")
    (out / "taxonomy.yaml").write_text("# Made by `python -m scripts.make_screens`: synthetic screenshots.\n"
                                       + yaml.safe_dump(taxonomy(), sort_keys=False))


def add_class(out: Path, label: str, count: int, seed: int) -> None:
    if label not in SCREENS:
        raise SystemExit(f"--new-class {label!r}: choose one of {', '.join(SCREENS)}")
    for split, n in (("train", count), ("valid", max(2, count // 4)), ("test", max(2, count // 4))):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        rows = write_split(out, split, [label], n, seed)
        with (out / f"{split}.jsonl").open("a") as handle:
            handle.write("".join(json.dumps(r) + "\n" for r in rows))
    path = out / "taxonomy.yaml"
    data = yaml.safe_load(path.read_text())
    data["routes"].insert(-1, {"name": label, "description": "A scanned or photographed paper document.",
                               "target": f"acme/lora-{label.replace('_', '-')}", "labels": [label]})
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    print(f"{out}: added {label}: {count} training images and a taxonomy route")


if __name__ == "__main__":
    main()
