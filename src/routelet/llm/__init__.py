"""LLM labeling: the Claude teacher (ingest, serve-time deferral) and the LLM baseline.

    from routelet.llm.config import TeacherConfig
    from routelet.llm.teacher import make_teacher
    teacher = make_teacher(taxonomy, TeacherConfig.from_params(params["ingest"]["teacher"]),
                           cache="data/teacher_cache.jsonl")
    results = teacher.label(texts)        # one Result per text, in order: labeled, review or queued

    routelet llm-baseline                 # scores an LLM on the holdout into report/baselines.json

Modules: config (settings, prices, budget), prompt (taxonomy prompt, answer parsing), cache
(answers on disk), retry, image (screenshots fitted to the API), teacher (Claude), openai_compat
(any chat-completions endpoint), batch (Message Batches), baseline (scoring), command (the CLI
subcommand). Nothing is imported here, so `import routelet.llm.command` stays cheap for the CLI.
Torch-free on purpose (the server imports it to defer abstentions): only anthropic, httpx, numpy,
pydantic, Pillow, the standard library and routelet.serving / routelet.data.taxonomy (the baseline
reads image holdouts with routelet.data and scores with routelet.evaluation.scores, numpy only).
"""
