"""Loading steering policies: formats, stable ids, bad inputs, the parse cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent import steering
from agent.errors import PolicyError
from agent.steering import load_policies
from tests.conftest import forget_caches, record_parsed

MD = """---
id: sec
title: Security
applies_to: [pii]
---
# Security

## Encryption
- PII columns MUST be encrypted at rest with a managed key.
- Backups MUST NOT be copied to personal laptops,
  even for debugging.
Some context that imposes nothing.

## Access
Service accounts SHOULD rotate keys every 90 days. Humans MAY request read access.
"""
MD_PLAIN = "# Naming\n\n## Tables\n- Table names MUST be snake_case.\n- Views SHOULD start with v_.\n"
YAML = """id: ret
title: Retention
rules:
  - id: raw
    text: Raw data MUST be retained for 90 days.
    tags: [lake]
  - id: base
    text: Baseline rules are always on and MUST be cited.
    always: true
"""
TXT = "Every pipeline MUST have an owner.\nAlerts SHOULD page within 15 minutes.\n"


def write(root: Path, files: dict[str, str | bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, body in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(body if isinstance(body, bytes) else body.encode())
    return root


# a private cache dir, and nothing of the caches held in memory (conftest's cache_dir)
pytestmark = pytest.mark.usefixtures("cache_dir")


def test_all_formats_load(tmp_path):
    root = write(tmp_path / "ctx", {"sec.md": MD, "naming.md": MD_PLAIN, "ret.yaml": YAML, "ops.txt": TXT})
    ps = load_policies(root)
    assert {p.id for p in ps.policies} == {"sec", "naming", "ret", "ops"}
    assert not [p for p in ps.problems if p.severity == "error"]
    sec = ps.policy("sec")
    assert sec.title == "Security" and sec.applies_to == ["pii"]
    assert all("pii" in r.tags for r in sec.rules)
    ret = ps.policy("ret")
    assert ps.rule("ret.base").always and not ps.rule("ret.raw").always
    assert "lake" in ps.rule("ret.raw").tags
    assert len(ps.policy("ops").rules) == 2
    assert len(ps.policy("naming").rules) == 2
    # non-normative prose is not a clause
    assert not any("imposes nothing" in r.text for r in ps.rules)
    assert ret.rules[0].line == 4


@pytest.mark.parametrize(
    "name, body",
    [("sec.md", MD), ("naming.md", MD_PLAIN), ("ret.yaml", YAML), ("ops.txt", TXT)]
    + [(p.name, p.read_text()) for p in sorted((Path(__file__).parents[1] / "context").iterdir())],
)
def test_plain_parse_has_the_models_fields_and_values(name, body):
    """The packing index's loader parses into plain namespaces (no pydantic): every field, every value
    and type the same as the models', all the way down."""

    def fields(obj):
        if isinstance(obj, list):
            return [fields(x) for x in obj]
        if hasattr(obj, "model_dump"):
            obj = dict(obj)  # the model's fields, one level (nested models stay models)
        elif hasattr(obj, "__dict__"):
            obj = vars(obj)
        else:
            return (type(obj), obj)
        return {k: fields(v) for k, v in obj.items()}

    model, problems = steering.parse_policy_bytes(body.encode(), Path(name))
    plain, plain_problems = steering.parse_policy_bytes(body.encode(), Path(name), plain=True)
    assert model is not None and type(plain).__name__ == "SimpleNamespace"
    assert fields(plain) == fields(model)
    assert plain_problems == problems


def test_must_not_stays_with_its_clause(tmp_path):
    ps = load_policies(write(tmp_path / "ctx", {"sec.md": MD}))
    rule = next(r for r in ps.rules if "laptops" in r.text)
    assert rule.modality == "MUST NOT"
    assert rule.text.startswith("Backups MUST NOT be copied")
    assert rule.text.endswith("even for debugging.")
    # no clause starts with a dangling negation
    assert not any(r.text.lstrip().upper().startswith("NOT ") for r in ps.rules)


def test_ids_stable_across_loads_and_unrelated_edits(tmp_path, monkeypatch):
    root = write(tmp_path / "ctx", {"sec.md": MD})
    monkeypatch.setenv("DATA_AGENT_CACHE_DIR", "off")  # each load parses the file again
    first = {r.text: r.id for r in load_policies(root).rules}
    forget_caches()
    second = {r.text: r.id for r in load_policies(root).rules}
    assert first == second
    # an edit in another section (and a new section at the end) leaves the encryption ids unchanged
    edited = MD.replace("Humans MAY request read access.", "Humans MAY request read access for 7 days.")
    edited += "\n## Logging\n- Logs MUST NOT contain secrets.\n"
    (root / "sec.md").write_text(edited)
    third = {r.text: r.id for r in load_policies(root).rules}
    for text, rid in first.items():
        if "Encryption" in rid or rid.startswith("sec.encryption"):
            assert third[text] == rid
    assert [i for i in first.values() if i.startswith("sec.encryption.")] == [
        i for i in third.values() if i.startswith("sec.encryption.")
    ]
    assert len(set(third.values())) == len(third)


def test_bad_inputs_reported_by_path_and_rest_loads(tmp_path):
    root = write(
        tmp_path / "ctx",
        {
            "good.md": MD_PLAIN,
            "binary.md": b"\x00\x01\x02MUST\x00" * 100,
            "latin1.txt": "Les donn\xe9es MUST be kept.".encode("latin-1"),
            "listfm.md": "---\n- a\n- b\n---\n# X\n- Things MUST work.\n",
        },
    )
    big = root / "huge.md"
    with open(big, "wb") as fh:  # sparse: 50 MB without writing 50 MB
        fh.truncate(50 * 1024 * 1024)
    (root / "empty").mkdir()
    loop = root / "loop"
    loop.mkdir()
    os.symlink(loop, loop / "again")
    os.symlink(root / "nowhere", root / "dangling.md")
    ps = load_policies(root)
    assert ps.policy("good") is not None
    reported = {Path(p.path).name for p in ps.problems}
    for name in ("binary.md", "latin1.txt", "huge.md", "listfm.md"):
        assert name in reported, (name, [str(p) for p in ps.problems])
    assert any("again" in p.path or "loop" in p.path for p in ps.problems)
    # front matter that is not a mapping: reported, but the body still loads with defaults
    assert ps.policy("listfm") is not None
    assert any("not a mapping" in p.message for p in ps.problems)


def test_nothing_loads_is_an_error_that_says_why(tmp_path):
    with pytest.raises(PolicyError, match="does not exist"):
        load_policies(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PolicyError, match="no policy files"):
        load_policies(tmp_path / "empty")
    write(tmp_path / "junk", {"a.md": b"\x00" * 10})
    with pytest.raises(PolicyError, match="binary"):
        load_policies(tmp_path / "junk")


def test_packaged_context_loads():
    ps = load_policies(None)
    assert len(ps.policies) >= 5
    assert len({r.id for r in ps.rules}) == len(ps.rules)


def test_persistent_cache_survives_a_new_process_and_sees_edits(tmp_path, monkeypatch):
    root = write(tmp_path / "ctx", {f"p{i}.md": MD_PLAIN.replace("Naming", f"Naming {i}") for i in range(20)})
    first = load_policies(root)
    forget_caches()  # as if a new process started: only the disk cache remains
    parsed = record_parsed(monkeypatch)
    second = load_policies(root)
    assert parsed == []
    assert [p.model_dump() for p in first.policies] == [p.model_dump() for p in second.policies]
    (root / "p3.md").write_text(MD_PLAIN.replace("snake_case", "lower snake_case"))
    forget_caches()
    third = load_policies(root)
    assert parsed == ["p3.md"]
    assert any("lower snake_case" in r.text for r in third.rules)


def test_corrupt_cache_file_is_ignored(tmp_path, monkeypatch):
    root = write(tmp_path / "ctx", {"a.md": MD_PLAIN})
    load_policies(root)
    for f in (tmp_path / "cache").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    forget_caches()
    assert load_policies(root).policy("a") is not None


@pytest.mark.parametrize(
    "text",
    [
        "",
        YAML,
        "- 1\n- 2\n",
        "a: &x 1\nb: *x\n",
        "when: 2024-01-01\nflag: yes\n",
        "rules: [unclosed\n",
        "a: \x07bell\n",  # refused by PyYAML's reader: the pure-Python loader words the error
        "x: !!python/object:os.system ls\n",
    ],
)
def test_yaml_policies_are_parsed_once_for_values_and_lines(text):
    """yamlio.compose_and_load: what yaml.compose and yaml.safe_load give (node lines, values, errors)."""
    import yaml

    from agent import yamlio

    def outcome(fn):
        try:
            return fn()
        except yaml.YAMLError as exc:
            return f"{type(exc).__name__}: {exc}"

    def tree(node):  # tag, line and value of every node: what steering reads rule lines from
        if node is None:
            return None
        value = node.value
        if isinstance(value, list):
            value = [tree(v) if isinstance(v, yaml.Node) else (tree(v[0]), tree(v[1])) for v in value]
        return (node.tag, node.start_mark.line, value)

    got = outcome(lambda: yamlio.compose_and_load(text))
    want = outcome(lambda: (yaml.compose(text, Loader=yaml.SafeLoader), yaml.safe_load(text)))
    if isinstance(want, str):
        assert got == want
    else:
        assert (tree(got[0]), got[1]) == (tree(want[0]), want[1])
