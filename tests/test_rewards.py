"""GRPO rewards, each on hand-made completions (strings and conversational), as TRL calls them."""

import pytest

from tests._helpers_precision import score_tolerance
from tests._helpers_train import make_tiny_classifier
from train.rewards import (
    REWARDS,
    concision,
    ends_with_eos,
    get_reward_funcs,
    no_user_turn,
    not_empty,
    preference,
)

CHOSEN = "Paris is the capital of France, on the Seine; it has been the seat of government for centuries."
REJECTED = "I like turtles. Turtles are reptiles with shells and some live for a hundred years."


def conv(text):
    return [{"role": "assistant", "content": text}]


def test_preference_prefers_answers_like_the_chosen_reply():
    completions = [
        "The capital of France is Paris, a city on the river Seine.",
        "Turtles have shells, and some of them live more than a hundred years.",
        "",
    ]
    scores = preference(completions, chosen=[CHOSEN] * 3, rejected=[REJECTED] * 3)
    assert scores[0] > 0.2, scores
    assert scores[1] < -0.2, scores
    assert scores[2] == 0.0  # nothing to compare: left to not_empty / ends_with_eos
    # Conversational completions (what TRL passes with chat prompts) score the same as strings.
    assert preference(
        [conv(c) for c in completions], chosen=[CHOSEN] * 3, rejected=[REJECTED] * 3
    ) == pytest.approx(scores, abs=1e-6)


def test_preference_scores_only_the_answer_before_an_invented_user_turn():
    answer = "The capital of France is Paris."
    run_on = answer + "\nUser: tell me about turtles with shells living a hundred years"
    clean, cut = preference([answer, run_on], chosen=[CHOSEN] * 2, rejected=[REJECTED] * 2)
    assert cut == pytest.approx(clean, abs=1e-6)


def test_ends_with_eos():
    eos = (2,)
    completions = ["A full answer.", "An answer cut off at the token lim", "", "Also complete."]
    ids = [[10, 11, 2], [10, 11, 12], [2], [10, 7]]
    assert ends_with_eos(completions, ids, eos_token_ids=eos) == [1.0, 0.0, 0.0, 0.0]
    # several EOS ids (an end-of-turn token beside EOS)
    assert ends_with_eos(["ok", "ok"], [[5, 2], [5, 7]], eos_token_ids=(2, 7)) == [1.0, 1.0]


@pytest.mark.parametrize(
    "text",
    [
        "Sure, here it is.\nInstruct: now write me another one",
        "Sure.<|im_start|>user\nmore please",
        "Done.\nUser: thanks",
        "Done.\nHuman: and then?",
    ],
)
def test_no_user_turn_penalises_each_marker(text):
    assert no_user_turn([text, conv(text), "A plain answer. The user asked for it."]) == [0.0, 0.0, 1.0]


def test_not_empty():
    assert not_empty(["", "   \n", conv(""), "Hi.", conv("Hello"), "\nUser: only a run-on"]) == [
        0.0,
        0.0,
        0.0,
        1.0,
        1.0,
        0.0,
    ]


def test_concision_relative_to_the_chosen_reply():
    chosen = " ".join(["word"] * 10)
    completions = [" ".join(["w"] * n) for n in (3, 10, 15, 20, 40)]
    assert concision(completions, chosen=[chosen] * 5) == pytest.approx([1.0, 1.0, 0.5, 0.0, 0.0])


def test_registry_names_match_what_trl_logs():
    from trl.trainer.utils import get_callable_name

    names = ["preference", "ends_with_eos", "no_user_turn", "not_empty", "concision"]
    funcs = get_reward_funcs(names, eos_token_ids=[2])
    assert [get_callable_name(f) for f in funcs] == names  # TRL logs rewards/<name>/mean
    assert set(names) < set(REWARDS)


def test_registry_rejects_bad_names_and_a_missing_reward_model():
    with pytest.raises(ValueError, match="unknown reward.*lenght"):
        get_reward_funcs(["preference", "lenght"])
    with pytest.raises(ValueError, match="reward_model_name_or_path"):
        get_reward_funcs(["reward_model"])
    with pytest.raises(ValueError, match="empty"):
        get_reward_funcs([])


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory, tiny_phi_dir):
    return make_tiny_classifier(tmp_path_factory.mktemp("tiny-reward-model"), tiny_phi_dir)


@pytest.mark.precision
def test_reward_model_scores_question_answer_pairs(tiny_classifier):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    (reward_model,) = get_reward_funcs(["reward_model"], reward_model_name_or_path=str(tiny_classifier))
    prompts = [[{"role": "user", "content": "What is the capital of France?"}]] * 3
    completions = [conv("Paris."), conv("Turtles live long.\nUser: more"), conv("Paris is the capital.")]
    scores = reward_model(prompts=prompts, completions=completions)
    assert len(scores) == 3 and len(set(scores)) == 3
    assert not AutoTokenizer.from_pretrained(tiny_classifier).chat_template  # the text-pair path

    # The same numbers as the classifier's own logit on (question, answer cut at the user turn).
    tokenizer = AutoTokenizer.from_pretrained(tiny_classifier)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier).eval()
    for completion, score in zip(
        ["Paris.", "Turtles live long.", "Paris is the capital."], scores, strict=False
    ):
        with torch.no_grad():
            expected = model(
                **tokenizer("What is the capital of France?", completion, return_tensors="pt")
            ).logits
        assert score == pytest.approx(expected[0, 0].item(), abs=score_tolerance())  # fp32, alone


def test_no_loop_grades_repetition_and_logs_the_loop_rate():
    from train.rewards import no_loop

    clean = "Paris is the capital of France. It sits on the Seine and is known for its museums and cafes."
    chorus = "We will rock you, we will rock you. " * 2 + "Buddy, you're a boy, make a big noise."
    stuck = "a being of " * 30
    logged = {}
    rewards = no_loop([clean, chorus, stuck], log_metric=lambda name, value: logged.update({name: value}))
    assert rewards[0] == 0.0 and rewards[0] > rewards[1] > rewards[2] >= -1.0  # graded, not a flag
    assert logged == {"loop_rate": pytest.approx(2 / 3)}  # a chorus said twice is a loop too
    # A conversational completion is scored on its text.
    assert no_loop([[{"role": "assistant", "content": clean}]]) == [0.0]
