"""The R1 formats: the R1-Zero prompt, the chat format and its Jinja twin, reading completions."""

import pytest
from jinja2.exceptions import TemplateError
from transformers import AutoTokenizer

from frugal_r1 import chat
from frugal_r1.errors import UserError
from frugal_r1.tokenizer import train_tokenizer

REPLY_1 = chat.format_assistant("2 + 2 = 4", "4")
REPLY_2 = chat.format_assistant("4 * 3 = 12", "12")

CONVERSATIONS = [  # transformers refuses an empty conversation
    [{"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2 + 2?"}],
    [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": REPLY_1},
     {"role": "user", "content": "Times 3?"}],
    [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "assistant", "content": REPLY_1},
     {"role": "user", "content": "b"}, {"role": "assistant", "content": "  no reasoning here"},
     {"role": "user", "content": "c"}, {"role": "assistant", "content": REPLY_2}],
    [{"role": "user", "content": "q"}, {"role": "assistant", "content": "<think>\nx</think>y</think>\n\n z"},
     {"role": "user", "content": "  spaces, émoji 🎉 and\nnewlines  "}],
]


@pytest.fixture(scope="module")
def auto_tokenizer(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer([chat.format_trace(f"What is {i} + {i}?", f"{i} + {i} = {2 * i}", str(2 * i))
                     for i in range(300)], 400, out)
    return AutoTokenizer.from_pretrained(out)


def test_r1_zero_prompt_is_the_papers_template():
    assert chat.r1_zero_prompt("  What is 2 + 2?\n") == (
        "A conversation between User and Assistant. The user asks a question, and the Assistant solves it. "
        "The assistant first thinks about the reasoning process in the mind and then provides the user with "
        "the answer. The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
        "tags, respectively, i.e., <think> reasoning process here </think> <answer> answer here </answer>. "
        "User: What is 2 + 2?. Assistant:")


def test_render_chat_exact_text():
    assert chat.render_chat(CONVERSATIONS[1], add_generation_prompt=True) == (
        "<|bos|>You are terse.<|User|>What is 2 + 2?<|Assistant|><think>\n")
    assert chat.render_chat(CONVERSATIONS[2], add_generation_prompt=True) == (
        "<|bos|><|User|>What is 2 + 2?<|Assistant|><answer>4</answer><|eos|><|User|>Times 3?<|Assistant|><think>\n")
    # After the last user turn the reasoning stays: that is the turn being trained on.
    assert chat.render_chat(CONVERSATIONS[3], add_generation_prompt=False) == (
        "<|bos|>S<|User|>a<|Assistant|><answer>4</answer><|eos|><|User|>b<|Assistant|>  no reasoning here<|eos|>"
        "<|User|>c<|Assistant|><think>\n4 * 3 = 12\n</think>\n<answer>12</answer><|eos|>")


def test_a_reply_continues_the_generation_prompt():
    for messages in CONVERSATIONS[:3]:
        completion = chat.format_completion("some reasoning", "7")
        reply = {"role": "assistant", "content": chat.THINK_START + "\n" + completion}
        assert chat.render_chat(messages + [reply], False) == chat.render_chat(messages, True) + completion + chat.EOS


@pytest.mark.parametrize("index", range(len(CONVERSATIONS)))
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_jinja_template_renders_exactly_like_render_chat(auto_tokenizer, index, add_generation_prompt):
    messages = CONVERSATIONS[index]
    rendered = auto_tokenizer.apply_chat_template(messages, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt)
    assert rendered == chat.render_chat(messages, add_generation_prompt)


def test_bad_conversations(auto_tokenizer):
    late_system = [{"role": "user", "content": "a"}, {"role": "system", "content": "b"}]
    tool = [{"role": "tool", "content": "x"}]
    for messages in (late_system, tool, [{"role": "user", "content": None}]):
        with pytest.raises(UserError):
            chat.render_chat(messages, True)
        with pytest.raises(TemplateError):
            auto_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_split_reasoning_and_extract_answer():
    assert chat.split_reasoning(REPLY_1) == ("2 + 2 = 4", "<answer>4</answer>")
    completion = chat.format_completion("a\nb", "x")  # as generated after the prompt's "<think>\n"
    assert chat.split_reasoning(completion) == ("a\nb", "<answer>x</answer>")
    assert chat.split_reasoning("<think> still thinking") == ("still thinking", "")
    assert chat.split_reasoning("just an answer") == ("", "just an answer")
    assert chat.split_reasoning("r1 </think> r2 </think> c") == ("r1 </think> r2", "c")
    assert chat.extract_answer(completion) == "x"
    assert chat.extract_answer(" <think> try <answer>1</answer> </think> <answer> 2 </answer>") == "2"
    assert chat.extract_answer("<think> r </think> <answer>1</answer><answer>3</answer>") == "3"
    assert chat.extract_answer("<think> r </think> no tags") is None
    assert chat.extract_answer("<answer>unclosed") is None
    assert chat.strip_reasoning(REPLY_1) == "<answer>4</answer>"
    assert chat.format_trace("Q?", "r", "a") == "Q?\n<think>\nr\n</think>\n<answer>a</answer>"
