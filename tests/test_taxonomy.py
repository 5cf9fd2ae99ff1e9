import numpy as np
import pytest

from routelet.data.taxonomy import Taxonomy

ROUTES = {
    "reject": "oos",
    "routes": [
        {"name": "banking", "description": "money", "target": "assistant.banking", "labels": ["balance", "transfer"]},
        {"name": "travel", "target": "meta-llama/Llama-3.2-1B", "labels": ["flight"]},
        {"name": "oos", "target": "fallback"},
    ],
}


def test_routes_own_labels_and_map_probabilities():
    taxonomy = Taxonomy.model_validate(ROUTES)
    assert taxonomy.labels == ["balance", "transfer", "flight", "oos"]
    assert taxonomy.route_of("transfer") == "banking"
    matrix = taxonomy.label_to_route_matrix(["flight", "balance", "oos", "transfer"])
    fine = np.array([[0.1, 0.3, 0.2, 0.4]])
    np.testing.assert_allclose(fine @ matrix, [[0.7, 0.1, 0.2]])


def test_routes_only_view_keeps_reject():
    view = Taxonomy.model_validate(ROUTES).as_routes_only()
    assert view.labels == ["banking", "travel", "oos"] and view.reject == "oos"


@pytest.mark.parametrize(
    "change,message",
    [
        ({"reject": "nope"}, "reject route 'nope'"),
        ({"routes": ROUTES["routes"] + [{"name": "dup", "labels": ["flight"]}]}, "belongs to both"),
        ({"routes": [{"name": "a", "target": "has spaces"}]}, "neither a handler name"),
        ({"routes": [{"name": "a", "target": "org/model/extra"}]}, "neither a handler name"),
    ],
)
def test_invalid_taxonomies_say_why(tmp_path, change, message):
    import yaml

    path = tmp_path / "taxonomy.yaml"
    path.write_text(yaml.safe_dump(ROUTES | change))
    with pytest.raises(ValueError, match=message) as error:
        Taxonomy.load(path)
    assert str(path) in str(error.value)


def test_from_labels_and_round_trip(tmp_path):
    taxonomy = Taxonomy.from_labels(["b", "a", "b"])
    assert taxonomy.route_names == ["a", "b"] and taxonomy.reject is None
    taxonomy.save(tmp_path / "t.json")
    assert Taxonomy.load(tmp_path / "t.json") == taxonomy
