"""OpenRLHF query parsing and request limits (no Serve)."""

from __future__ import annotations

import pytest

from copl_ray.serving.protocol import Limits, RewardRequest, ScoreRequest, bearer_ok, label_user, split_query

P, R = "What is a cat?", "A small feline."


@pytest.mark.parametrize("query,prompt", [
    (f"Human: {P} Assistant: {R}", None),                                   # 0.4: query only, our template
    (f"<s>Human: {P} Assistant: {R}</s>", None),                            # BOS/EOS text kept by decode
    (f"Human: {P} Assistant: {R}</s>", f"Human: {P}"),                      # prompts = our template
    (f"<s>Human: {P} Assistant: {R}</s>", f"Human: {P}"),
    (f"<|im_start|>user\n{P}<|im_end|>\n<|im_start|>assistant\n{R}<|im_end|>",
     f"<|im_start|>user\n{P}<|im_end|>\n<|im_start|>assistant\n"),         # ChatML
    (f"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{P}<|eot_id|>"
     f"<|start_header_id|>assistant<|end_header_id|>\n\n{R}<|eot_id|>",
     f"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{P}<|eot_id|>"
     "<|start_header_id|>assistant<|end_header_id|>\n\n"),                 # Llama 3
    (f"<bos><start_of_turn>user\n{P}<end_of_turn>\n<start_of_turn>model\n{R}<end_of_turn><eos>",
     f"<bos><start_of_turn>user\n{P}<end_of_turn>\n<start_of_turn>model\n"),  # Gemma
    (f"{P} {R}<|endoftext|>", P),                                           # plain prompt + response
])
def test_split_query_recovers_prompt_and_response(query, prompt):
    assert split_query(query, prompt) == (P, R)


def test_split_query_without_prompt_or_template_scores_the_whole_text():
    assert split_query(f"{R}</s>", None) == ("", R)


def test_label_user():
    assert label_user("u1") == "u1" and label_user({"user_id": "u2"}) == "u2"
    assert label_user(3) is None and label_user({"user": "x"}) is None and label_user(None) is None


def test_bodies_are_strict():
    with pytest.raises(ValueError, match="responses"):
        ScoreRequest.model_validate_json(b'{"user_id": "u", "prompt": "p", "responses": "a"}')
    with pytest.raises(ValueError, match="prompt"):
        ScoreRequest.model_validate_json(b'{"user_id": "u", "prompt": 3, "responses": ["a"]}')
    with pytest.raises(ValueError, match="extra"):
        ScoreRequest.model_validate_json(b'{"user_id": "u", "prompt": "p", "responses": [], "x": 1}')
    # OpenRLHF's body: later versions add keys; unknown keys are ignored there
    assert RewardRequest.model_validate_json(b'{"query": [], "new_key": 1}').query == []
    assert Limits().max_body_bytes == 1_000_000


def test_bearer_token():
    assert bearer_ok(None, None) and bearer_ok("anything", None)
    assert bearer_ok("Bearer s3cret", "s3cret")
    assert not bearer_ok(None, "s3cret") and not bearer_ok("Bearer wrong", "s3cret")
    assert not bearer_ok("s3cret", "s3cret")
