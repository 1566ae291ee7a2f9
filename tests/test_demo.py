"""Demo models: the training recipe on a tiny model (CPU), its data formats, resuming, and the demo names."""

from __future__ import annotations

import json

import pytest
import torch

from gdn2_eval.demo import train as demo_train
from gdn2_eval.demo.train import DemoRecipe, kv_recall_samples, train_demo, training_example
from gdn2_eval.errors import UserError

TINY = dict(hidden_size=32, layers=2, heads=2, head_dim=16, intermediate_size=64, vocab_size=400,
            batch_tokens=4 * 640, lr=3e-3, warmup=5, lengths=(640,), curriculum_steps=0, eval_samples=2)


@pytest.fixture(scope="module")
def demo_tok(tmp_path_factory):
    tok_dir = tmp_path_factory.mktemp("demo-tok")
    demo_train.demo_tokenizer(400).save_pretrained(tok_dir)
    return demo_train.load_tokenizer(tok_dir)


def test_training_examples_put_the_loss_on_the_answer_only(demo_tok):
    samples = kv_recall_samples(640, 3, demo_tok, start=0)
    for s in samples:
        ids, labels = training_example(s, demo_tok)
        prompt_len = len(demo_tok(s["input"] + s["answer_prefix"], add_special_tokens=False)["input_ids"])
        assert prompt_len + 128 <= 640 and s["outputs"][0] in s["input"]
        answer = [t for t in labels if t != -100]
        assert labels[:prompt_len] == [-100] * prompt_len and answer == ids[prompt_len:]
        assert answer[-1] == demo_tok.eos_token_id
        assert demo_tok.decode(answer[:-1]) == " " + s["outputs"][0] + "."
    assert demo_train.TRAIN_SEED != demo_train.DEFAULT_SEED


def test_key_value_lists_fill_their_length_and_ask_about_a_listed_key(demo_tok):
    for length in (384, 1024):
        for s in kv_recall_samples(length, 8, demo_tok, start=100):
            used = len(demo_tok(s["input"] + s["answer_prefix"], add_special_tokens=False)["input_ids"]) + 128
            assert 0.9 * length <= used <= length  # as many lines as fit, no more
            key = s["answer_prefix"].removeprefix(" The value of ").removesuffix(" is")
            assert f"\n{key}: {s['outputs'][0]}\n" in s["input"]
            assert s["input"].endswith(f"What is the value of {key}?")


def test_batches_depend_only_on_the_step_and_start_short(demo_tok, tmp_path):
    recipe = DemoRecipe(**{**TINY, "lengths": (640, 1280), "batch_tokens": 2560, "curriculum_steps": 3,
                           "curriculum_lengths": (160,)})
    first = [demo_train.batch_examples(step, recipe, demo_tok) for step in range(8)]
    assert first == [demo_train.batch_examples(step, recipe, demo_tok) for step in range(8)]
    assert len({tuple(ids) for batch in first for ids, _ in batch}) == sum(map(len, first))  # no sample repeats
    sizes = [len(batch) for batch in first]
    assert sizes[:3] == [16, 16, 16] and set(sizes[3:]) <= {2, 4} and 2 in sizes  # 2560 // 160, 640 or 1280
    # at 160 tokens only the key-value lists fit: the formats that do not are left out, not retried
    assert all(demo_tok.decode(ids).startswith("Remember the value of every key.") for ids, _ in first[0])
    for batch in first:  # every example of a batch fits the batch's length
        assert max(len(ids) for ids, _ in batch) <= 2560 // len(batch)
    demo_tok.save_pretrained(tmp_path / "tok")
    # two data workers hand out the same batches, in the same order, as the inline stream; a resumed stream
    # (start=5) continues the sequence
    stream = demo_train.RetrievalStream(str(tmp_path / "tok"), recipe, 0)
    inline = [b for b, _ in zip(stream, range(8))]
    workers = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=2)
    for a, b in zip(inline, workers):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    resumed = next(iter(demo_train.RetrievalStream(str(tmp_path / "tok"), recipe, 5)))
    assert all(torch.equal(x, y) for x, y in zip(resumed, inline[5]))


def test_tiny_demo_trains_saves_a_loadable_model_and_a_card(tmp_path):
    from gdn2_eval.loading import load_model

    rec = train_demo(DemoRecipe(gates="kda", steps=40, **TINY), tmp_path / "m", device="cpu")
    assert rec["steps_done"] == 40 and rec["final_loss"] < rec["first_loss"] - 0.5  # it learns the answer format
    assert set(rec["eval_string_match_all"]) == {"niah_single_1@1024", "niah_single_1@2048"}
    card = (tmp_path / "m" / "README.md").read_text()
    assert "not evidence about the\narchitecture at scale" in card and f"{rec['parameters']:,}" in card
    assert "train-demo --gates kda --steps 40 --batch-tokens 2560 --lengths 640 --curriculum-steps 0" in card
    assert DemoRecipe.from_record(json.loads((tmp_path / "m" / "training.json").read_text())["recipe"]) == DemoRecipe(
        gates="kda", steps=40, **TINY)  # the record gives the recipe back
    assert not (tmp_path / "m" / "checkpoint").exists()
    loaded = load_model(tmp_path / "m", device="cpu")
    assert loaded.model.config.gates == "kda" and loaded.tokenizer.eos_token_id == 1
    assert json.loads((tmp_path / "m" / "training.json").read_text())["recipe"]["gates"] == "kda"
    with pytest.raises(UserError, match="finished training"):
        train_demo(DemoRecipe(gates="kda", steps=40, **TINY), tmp_path / "m", device="cpu", resume=True)


def test_interrupted_training_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_loss = demo_train.answer_loss

    def failing(*args):
        calls["n"] += 1
        if calls["n"] > 12:
            raise KeyboardInterrupt
        return real_loss(*args)

    recipe = DemoRecipe(steps=20, save_every=10, **TINY)
    monkeypatch.setattr(demo_train, "answer_loss", failing)
    with pytest.raises(KeyboardInterrupt):
        train_demo(recipe, tmp_path / "m", device="cpu")
    state = torch.load(tmp_path / "m" / "checkpoint" / "state.pt", weights_only=True)
    assert state["step"] == 10
    with pytest.raises(UserError, match="--resume"):
        train_demo(recipe, tmp_path / "m", device="cpu")
    monkeypatch.setattr(demo_train, "answer_loss", real_loss)
    rec = train_demo(recipe, tmp_path / "m", device="cpu", resume=True)
    log = json.loads((tmp_path / "m" / "train_log.json").read_text())
    assert rec["steps_done"] == 20 and [row[0] for row in log] == list(range(1, 21))
    assert rec["resumed_at_steps"] == [10] and "resumed from its checkpoint at step 10" in (
        tmp_path / "m" / "README.md").read_text()
    seconds = [row[2] for row in log]  # the clock carries on across the resume
    assert seconds == sorted(seconds) and rec["train_minutes"] * 60 >= seconds[-1] - 0.6


def test_a_run_stopped_by_its_time_limit_keeps_its_checkpoint_and_resumes(tmp_path):
    stopped = train_demo(DemoRecipe(steps=6, max_minutes=0.0, **TINY), tmp_path / "m", device="cpu")
    assert stopped["stopped_by_time_limit"] and stopped["steps_done"] == 0
    assert torch.load(tmp_path / "m" / "checkpoint" / "state.pt", weights_only=True)["step"] == 0
    rec = train_demo(DemoRecipe(steps=6, **TINY), tmp_path / "m", device="cpu", resume=True)
    assert rec["steps_done"] == 6 and not rec["stopped_by_time_limit"]
    assert rec["resumed_at_steps"] == [0]
    assert not (tmp_path / "m" / "checkpoint").exists()


def test_demo_names_resolve_or_say_how_to_get_them(tmp_path, monkeypatch):
    from gdn2_eval import demo

    monkeypatch.setattr(demo, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(UserError, match="train-demo --gates kda"):
        demo.resolve_model("demo-kda")
    with pytest.raises(UserError, match="unknown demo"):
        demo.demo_dir("demo-xl")
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "config.json").write_text("{}")
    assert demo.resolve_model("demo") == str(tmp_path / "demo")
    assert demo.resolve_model("some/other/path") == "some/other/path"


def test_a_model_trained_without_evaluation_is_evaluated_later_from_the_cli(tmp_path):
    from conftest import cli

    train_demo(DemoRecipe(steps=3, **{**TINY, "eval_samples": 0}), tmp_path / "m", device="cpu")
    assert "Not evaluated yet" in (tmp_path / "m" / "README.md").read_text()
    result = cli("train-demo", "--out", tmp_path / "m", "--evaluate", "--eval-samples", "3", "--device", "cpu")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "m" / "training.json").read_text())
    assert record["eval_samples"] == 3 and set(record["eval_string_match_all"]) == {
        "niah_single_1@1024", "niah_single_1@2048"}
    card = (tmp_path / "m" / "README.md").read_text()
    assert "3 fresh samples per cell" in card and "| niah_single_1@2048 |" in card and "Not evaluated" not in card
    result = cli("train-demo", "--out", tmp_path / "nothing", "--evaluate", "--device", "cpu")
    assert result.exit_code != 0 and "no finished demo training" in result.output


def test_the_three_demos_take_turns_over_several_gpus(tmp_path, monkeypatch):
    started = []

    class Proc:
        def __init__(self, cmd, env=None):
            started.append((cmd[cmd.index("--gates") + 1], (env or {}).get("CUDA_VISIBLE_DEVICES")))
            out = tmp_path / cmd[cmd.index("--out") + 1]
            out.mkdir(parents=True)
            (out / "training.json").write_text("{}")

        def wait(self):
            return 0

    monkeypatch.setattr("subprocess.Popen", Proc)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert demo_train.train_all(tmp_path, []) == [{}, {}, {}]
    assert started == [("gdn2", "2"), ("kda", "5"), ("gdn", "2")]
    started.clear()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")  # one GPU: they share it, inheriting the environment
    demo_train.train_all(tmp_path / "one", [])
    assert [gpu for _, gpu in started] == [None, None, None]
