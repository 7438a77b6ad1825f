import pytest
from transformers import AutoTokenizer

from assistant.prompt import (
    PHI2_CHAT_TEMPLATE,
    InputTooLong,
    build_messages,
    cut_at_user_turn,
    ensure_chat_template,
    fit_to_context,
    normalize_history,
)


@pytest.fixture(scope="module")
def phi_tokenizer(tiny_phi_dir):
    return ensure_chat_template(AutoTokenizer.from_pretrained(tiny_phi_dir))


def test_phi2_template_renders_the_documented_instruct_output_format(phi_tokenizer):
    assert phi_tokenizer.chat_template == PHI2_CHAT_TEMPLATE
    eos = phi_tokenizer.eos_token
    messages = build_messages(
        "And France?",
        [{"role": "user", "content": "Capital of Spain?"}, {"role": "assistant", "content": "Madrid."}],
        "Be brief.",
    )
    text = phi_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert (
        text
        == f"Be brief.\n\nInstruct: Capital of Spain?\nOutput: Madrid.{eos}\nInstruct: And France?\nOutput:"
    )


def test_template_of_a_model_that_has_one_is_kept(smollm2_dir):
    tokenizer = ensure_chat_template(AutoTokenizer.from_pretrained(smollm2_dir))
    assert "<|im_start|>" in tokenizer.chat_template


def test_history_from_gradio_browser_and_api_normalise_alike():
    browser = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}], "metadata": None, "options": None},
        {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
    ]
    api = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert normalize_history(browser) == normalize_history(api) == api


def test_trimming_drops_whole_turns_oldest_first_and_keeps_system_and_latest(phi_tokenizer):
    history = []
    for i in range(6):
        history += [
            {"role": "user", "content": f"question {i} " + "word " * 20},
            {"role": "assistant", "content": f"answer {i} " + "word " * 20},
        ]
    messages = build_messages("latest question", history, "system prompt")
    kept, dropped = fit_to_context(phi_tokenizer, messages, 120)
    assert kept[0] == messages[0] and kept[-1] == messages[-1]
    assert dropped > 0 and dropped % 2 == 0
    assert kept[1:-1] == messages[1 + dropped : -1]  # the newest turns survive, whole
    assert len(phi_tokenizer.apply_chat_template(kept, add_generation_prompt=True)["input_ids"]) <= 120


def test_a_message_that_cannot_fit_alone_is_refused(phi_tokenizer):
    with pytest.raises(InputTooLong, match="too long"):
        fit_to_context(phi_tokenizer, build_messages("word " * 500, [], "system"), 100)


def test_cut_at_user_turn():
    assert cut_at_user_turn("Paris.\nInstruct: and Spain?") == ("Paris.", True)
    assert cut_at_user_turn("Paris.") == ("Paris.", False)
