"""The packer's persistent per-file index cache: same packs as without it, corrupt files ignored,
edited copies of loaded policies never served stale facts."""

from __future__ import annotations

from agent import compress
from agent.compress import pack
from agent.request import request_from_text
from agent.steering import load_policies
from tests.conftest import forget_caches

REQUESTS = [
    "stream clickstream events from kafka into snowflake with customer emails",
    "nightly batch of postgres orders into bigquery for finance dashboards",
    "Postgres CDC into Snowflake hourly with PII",
]


def _packs(context=None) -> list[str]:
    ps = load_policies(context)
    out = []
    for text in REQUESTS:
        for encoding in ("cl100k_base", "o200k_base"):
            for budget in (120, 900, 4000):
                out.append(
                    pack(ps, request_from_text(text), budget=budget, encoding=encoding).model_dump_json()
                )
    return out


def test_cold_warm_and_uncached_packs_are_identical(cache_dir, monkeypatch):
    cold = _packs()
    files = list(cache_dir.glob("pack-index-*.pkl"))
    assert len(files) == 1
    forget_caches()
    warm = _packs()
    assert warm == cold
    monkeypatch.setenv("DATA_AGENT_CACHE_DIR", "off")
    forget_caches()
    assert _packs() == cold


def test_corrupt_index_cache_is_a_cold_cache(cache_dir):
    cold = _packs()
    (index_file,) = cache_dir.glob("pack-index-*.pkl")
    index_file.write_bytes(b"\x80\x05not a pickle")
    forget_caches()
    assert _packs() == cold
    forget_caches()
    assert _packs() == cold  # rewritten and readable again


def test_edited_copy_is_not_served_cached_facts(cache_dir):
    ps = load_policies(None)
    pack(ps, request_from_text(REQUESTS[0]))  # fills the index cache for the loaded objects
    ps.policies = [p.model_copy(deep=True) for p in ps.policies]
    rule = next(r for p in ps.policies for s in p.sections for r in s.rules if not r.always)
    rule.text = "Every pipeline MUST tag zanzibarquux datasets with an owner."
    assert compress.rank_rules(ps, "zanzibarquux", {"all"})[0][0].id == rule.id
    result = pack(ps, query="zanzibarquux", budget=300)
    assert rule.id in result.policy_ids and "zanzibarquux" in result.text


def test_changed_file_is_reindexed(cache_dir, tmp_path):
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    f = ctx / "ops.md"
    f.write_text("---\nid: ops\n---\n## Runs\n- Jobs MUST retry twice.\n")
    assert "retry" in _packs(ctx)[0]
    f.write_text("---\nid: ops\n---\n## Runs\n- Jobs MUST page the zanzibarquux rota.\n")
    forget_caches()
    ps = load_policies(ctx)
    result = pack(ps, query="zanzibarquux", budget=300)
    assert "zanzibarquux" in result.text and "retry" not in result.text
    assert [k for k in compress._FACTS.data() if k.startswith(f"{f.absolute()}:")] == [ps.sources[0]]


def test_fast_policy_item_is_model_construct():
    from agent.models import PackItem

    assert compress._FAST_ITEMS
    fast = compress._policy_item("p.s.1", "dropped", "why", 12, 0.5)
    slow = PackItem.model_construct(
        id="p.s.1", origin="policy", status="dropped", reason="why", tokens=12, score=0.5
    )
    assert fast == slow
    assert fast.model_dump() == slow.model_dump()
    assert fast.model_fields_set == slow.model_fields_set
    assert fast.model_dump_json() == slow.model_dump_json()
    fast.status = "kept"  # assignment still works, as on any model
    assert fast.status == "kept"
