"""Fold selectors: SPLIT[k/K] and SPLIT[^k/K] are speaker-disjoint, cover the split, and are stable."""

from __future__ import annotations

import pytest
from corpus_factory import write_corpus

from llmser.data.folds import FoldSelector, fold_of_each, parse_split
from llmser.data.msp_podcast import CorpusError, MSPPodcast


def _rows(n_speakers=7, per_speaker=(1, 2, 3, 4, 5, 2, 1)):
    rows = []
    for s in range(n_speakers):
        for i in range(per_speaker[s]):
            rows.append([f"MSP-PODCAST_{s:04d}_{i:04d}.wav", "HNSA"[i % 4], 4.0, 4.0, 4.0, str(100 + s), "Female",
                         "Development"])
    rows += [[f"MSP-PODCAST_9999_{i:04d}.wav", "N", 4.0, 4.0, 4.0, "Unknown", "Unknown", "Development"]
             for i in range(4)]
    rows += [["MSP-PODCAST_0500_0001.wav", "A", 3.0, 3.0, 3.0, "500", "Male", "Train"]]
    return rows


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return MSPPodcast.from_folder(write_corpus(tmp_path_factory.mktemp("folds"), _rows()))


def test_folds_partition_the_split_by_speaker(corpus):
    dev = {u.file_name for u in corpus.utterances("dev")}
    folds = [corpus.utterances(f"dev[{k}/3]") for k in range(3)]
    names = [{u.file_name for u in fold} for fold in folds]
    assert set().union(*names) == dev and sum(map(len, names)) == len(dev)  # a partition
    speakers = [{u.speaker for u in fold if u.speaker != "Unknown"} for fold in folds]
    assert all(not (speakers[a] & speakers[b]) for a in range(3) for b in range(a + 1, 3))
    assert max(map(len, folds)) - min(map(len, folds)) <= 2  # dealt evenly, largest speaker first
    for k in range(3):
        rest = {u.file_name for u in corpus.utterances(f"dev[^{k}/3]")}
        assert rest == dev - names[k]
    assert corpus.resolve_split("dev[^1/3]") == "Development[^1/3]"
    assert [u.file_name for u in corpus.utterances("dev[1/3]")] == [u.file_name for u in folds[1]]  # stable


def test_unknown_speakers_are_dealt_file_by_file():
    folds = fold_of_each(["Unknown"] * 6, [f"f{i}" for i in range(6)], 3)
    assert sorted(folds) == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("bad", ["dev[5/5]", "dev[0/1]", "dev[a/5]", "dev[0/5", "dev]"])
def test_bad_selectors_say_how_to_write_one(corpus, bad):
    with pytest.raises(CorpusError, match=r"SPLIT\[k/K\]|K >= 2"):
        corpus.utterances(bad)


def test_overlap_between_selections():
    def sel(text):
        return parse_split(text)[1]

    assert not sel("train[^2/5]").overlaps(sel("train[2/5]"))
    assert sel("train[^2/5]").overlaps(sel("train[^3/5]"))
    assert not sel("dev[0/5]").overlaps(sel("dev[1/5]"))
    assert sel("dev[0/5]").overlaps(None) and sel("dev[0/5]").overlaps(FoldSelector("dev", 0, 4, False))
