"""The context pack: budget, determinism, always rules, negations, the budget split, accounting."""

from __future__ import annotations

import random

import pytest

from agent import tokens
from agent.compress import POLICY_SHARE, pack
from agent.models import Memory, RecalledMemory
from agent.request import request_from_text
from agent.steering import load_policies
from tests.conftest import forget_caches

BUDGETS = sorted(
    {50, 60, 80, 120, 200, 333, 500, 777, 1000, 1500, 2000, 2500, 3000, 4000, 5000, 6000}
    | {random.Random(7).randint(50, 6000) for _ in range(12)}
)
QUERIES = [
    "stream clickstream events from kafka into snowflake with customer emails",
    "nightly batch of postgres orders into bigquery for finance dashboards",
    "",
]


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("DATA_AGENT_CACHE_DIR", str(cache))
    forget_caches()
    ps = load_policies(None)
    ps.policies = [p.model_copy(deep=True) for p in ps.policies]  # the loader's objects are shared
    first = ps.policies[0]
    for section in first.sections:
        for rule in section.rules[:1]:
            rule.always = True
    yield ps
    mp.undo()


def memories(n=3, words=300):
    out = []
    for i in range(n):
        text = " ".join(f"Design {i} used step {j} for the orders pipeline." for j in range(words // 8))
        out.append(
            RecalledMemory(
                memory=Memory(id=f"m{i}", kind="design", text=text), score=1 - i / 10, similarity=0.5
            )
        )
    return out


def always_ids(ps):
    return [r.id for r in ps.rules if r.always]


@pytest.mark.parametrize("encoding", tokens.ENCODINGS)
def test_never_over_budget(policies, encoding):
    for budget in BUDGETS:
        for q in QUERIES:
            for mems in ((), memories()):
                result = pack(policies, query=q, memories=mems, budget=budget, encoding=encoding)
                counted = tokens.count(result.text, encoding)
                assert counted == result.tokens
                assert counted <= budget, (budget, q, counted)


def test_safety_factor_shrinks_the_limit(policies):
    result = pack(policies, query=QUERIES[0], budget=2000, safety_factor=1.3)
    assert tokens.count(result.text) <= int(2000 / 1.3)


def test_same_input_same_bytes(policies):
    req = request_from_text("replicate postgres customers with emails into snowflake hourly")
    a = pack(policies, req, memories=memories(), budget=1500)
    forget_caches()
    b = pack(load_policies(None), req, memories=memories(), budget=1500)
    # b has no always flags, so compare a with a fresh pack of the same set
    c = pack(policies, req, memories=memories(), budget=1500)
    assert a.text.encode() == c.text.encode()
    assert a.model_dump() == c.model_dump()
    assert b.text == pack(load_policies(None), req, memories=memories(), budget=1500).text


def test_always_rules_kept_whatever_the_request(policies):
    must = always_ids(policies)
    assert must
    for q in QUERIES + ["completely unrelated text about gardening"]:
        for budget in (4000, 1000):
            result = pack(policies, query=q, budget=budget)
            assert set(must) <= set(result.policy_ids), (q, budget)
            for rid in must:
                assert f"[{rid}]" in result.text


def test_always_rules_win_at_small_budgets(policies):
    must = always_ids(policies)
    for budget in (50, 120, 300):
        result = pack(policies, query="kafka", memories=memories(), budget=budget)
        kept = set(result.policy_ids)
        # whatever fits, always rules come first: nothing else is kept while an always rule is dropped
        if not set(must) <= kept:
            assert kept <= set(must), budget


def test_clauses_verbatim_and_negations_whole(policies):
    result = pack(policies, query=QUERIES[0], budget=4000)
    for rid in result.policy_ids:
        rule = policies.rule(rid)
        assert f"[{rid}] {rule.text}\n" in result.text
        if "NOT" in rule.modality:
            assert rule.modality in rule.text or "NEVER" in rule.text.upper()


def test_every_clause_and_memory_accounted_for(policies):
    mems = memories(4)
    result = pack(policies, query=QUERIES[1], memories=mems, budget=1200)
    ids = [i.id for i in result.items]
    assert len(ids) == len(set(ids))
    assert set(ids) == {r.id for r in policies.rules} | {m.memory.id for m in mems}
    for item in result.items:
        assert item.status in ("kept", "trimmed", "dropped") and item.reason
        if item.origin == "policy":
            assert (item.status == "kept") == (item.id in result.policy_ids)
    assert {i.id for i in result.items if i.origin == "memory" and i.status != "dropped"} == set(
        result.memory_ids
    )


def test_relevant_clauses_rank_first(policies):
    result = pack(policies, query="kafka streaming topics schema registry", budget=600)
    kept_text = " ".join(
        policies.rule(i).text.lower() for i in result.policy_ids if not policies.rule(i).always
    )
    assert "kafka" in kept_text or "stream" in kept_text or "topic" in kept_text


def test_unused_memory_room_goes_to_policies(policies):
    budget = 2000
    without = pack(policies, query=QUERIES[0], budget=budget)
    assert without.tokens > budget * POLICY_SHARE  # policies used the memory side too
    small = [
        RecalledMemory(
            memory=Memory(id="s", kind="learning", text="Use idempotent merges."), score=1, similarity=1
        )
    ]
    with_small = pack(policies, query=QUERIES[0], memories=small, budget=budget)
    assert with_small.memory_ids == ["s"]
    policy_tokens = sum(i.tokens for i in with_small.items if i.origin == "policy" and i.status == "kept")
    assert policy_tokens > budget * POLICY_SHARE * 0.9


def test_unused_policy_room_goes_to_memories(tmp_path):
    root = tmp_path / "ctx"
    root.mkdir()
    (root / "tiny.md").write_text("# Tiny\n\n## One\n- Every table MUST have an owner.\n")
    ps = load_policies(root)
    budget = 3000
    result = pack(ps, query="orders", memories=memories(8, 350), budget=budget)
    mem_tokens = sum(i.tokens for i in result.items if i.origin == "memory" and i.status != "dropped")
    assert mem_tokens > budget * (1 - POLICY_SHARE) * 1.5
    assert result.tokens <= budget


def test_memory_share_is_protected_when_policies_overflow(policies):
    budget = 3000
    result = pack(policies, query=QUERIES[0], memories=memories(8, 350), budget=budget)
    mem_tokens = sum(i.tokens for i in result.items if i.origin == "memory" and i.status != "dropped")
    assert mem_tokens >= budget * (1 - POLICY_SHARE) * 0.8


def test_terms_are_the_regex_words_of_the_lowercased_text_stemmed():
    """terms() splits ASCII text with byte operations and other text with the regex: both must give the
    stemmed [a-z0-9]+ runs of text.lower(), including where lower() makes ASCII letters (Kelvin sign,
    dotted capital I) and around tabs, newlines, punctuation and digits."""
    import re

    from agent.compress import STOPWORDS, stem, terms

    def reference(text: str) -> list[str]:
        words = re.findall(r"[a-z0-9]+", text.lower())
        return [stem(w) for w in words if len(w) > 1 and w not in STOPWORDS]

    rng = random.Random(7)
    alphabet = "abcXYZ019 -_.,;:/[]()'\"\t\n\r\x0b\x0c\x00\x7féÉ\u212a\u0130ß日本"
    texts = ["", "MUST NOT", "Orders.Email MUST be masked", "K\u212aelvin", "\u0130stanbul ids"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(5000)]
    for text in texts:
        assert terms(text) == reference(text), text


def test_terms_each_is_terms_of_each_text():
    """terms_each() translates many texts in one call, joined by newlines: a text with its own newline,
    or any non-ASCII character, must not shift or merge another text's words."""
    from agent.compress import terms, terms_each

    rng = random.Random(11)
    alphabet = "abcXYZ019 -_.,;:/[]()\t\n\r\x00é\u212a日"
    for n in range(400):
        texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(n % 9)]
        if n % 3 == 0:  # mostly ASCII without newlines: the one-call path
            texts = [t.replace("\n", " ").encode("ascii", "ignore").decode() for t in texts]
        assert terms_each(texts) == [terms(t) for t in texts], texts
    assert terms_each([]) == [] and terms_each([""]) == [[]] and terms_each(["", ""]) == [[], []]
