
from mmnet.cli import main


def _rows(out):
    return {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}


def _check(made, *options):
    return main(["data", "check", "--root", str(made.root), "--dataset", "refcoco", "--split-by", "unc", "--workers", "2", *options])


def test_clean_set_is_counted_per_split(handmade, capsys):
    assert _check(handmade) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    # refs, sentences, images: train ref 1 (2 sentences), val ref 4 (1), testA ref 2 (1), testB ref 3 (3);
    # refs 1 and 4 share image 1.
    assert [rows[s] for s in ("train", "val", "testA", "testB", "total")] == [
        ["1", "2", "1"], ["1", "1", "1"], ["1", "1", "1"], ["1", "3", "1"], ["4", "7", "4"]
    ]
    assert "no problems found" in out


def test_synthetic_set_passes(synth_root, capsys):
    assert main(["data", "check", "--root", str(synth_root), "--dataset", "synthref", "--split-by", "unc"]) == 0
    assert set(_rows(capsys.readouterr().out)) >= {"train", "val", "testA", "testB"}


def test_problems_are_listed_and_the_exit_status_is_not_zero(handmade, capsys):
    handmade.image_path(2).unlink()
    handmade.image_path(3).write_bytes(b"\xff\xd8\xff broken")
    handmade.refs[0]["ann_id"] = 404
    handmade.refs[3]["sentences"][0]["sent"] = ""
    handmade.write()
    assert _check(handmade) == 2
    captured = capsys.readouterr()
    assert "2 problem(s) with refs and annotations" in captured.out
    assert "ref 1: its annotation 404 is not in instances.json" in captured.out
    assert "ref 4: sentence 106 is empty" in captured.out
    assert "2 problem(s) with images" in captured.out
    assert f"{handmade.image_path(2)}: image not found" in captured.out
    assert f"{handmade.image_path(3)}: cannot be read as an image" in captured.out
    assert "4 problem(s)" in captured.err and str(handmade.root / "refcoco") in captured.err


def test_missing_refs_pickle_is_a_clear_error(handmade, capsys):
    (handmade.dataset_dir / "refs(unc).p").unlink()
    assert _check(handmade) == 2
    assert "refs(unc).p: refs pickle not found" in capsys.readouterr().err


def test_expressions_cut_at_the_context_length_are_counted(handmade, capsys):
    # 20 words of one token each: 22 tokens with [SOS] and [EOS], cut at 17, whole at 22.
    handmade.refs[3]["sentences"][0]["sent"] = " ".join(["red"] * 20)
    handmade.write()
    assert _check(handmade) == 0
    assert "1 of 7 expressions are cut at context length 17 (the longest takes 22 tokens with [SOS] and [EOS])" in capsys.readouterr().out
    assert _check(handmade, "--context-length", "22") == 0
    assert "0 of 7 expressions are cut at context length 22" in capsys.readouterr().out


def test_bad_annotations_and_records_are_listed(handmade, capsys):
    handmade.instances["annotations"][2]["segmentation"]["counts"] = "1"
    handmade.instances["images"].append(dict(handmade.instances["images"][0]))
    handmade.instances["images"][1]["height"] = "24"
    handmade.write()
    assert _check(handmade) == 2
    out = capsys.readouterr().out
    instances = handmade.dataset_dir / "instances.json"
    assert f"{instances}: annotation 13 (of ref 3): RLE counts must be 640 pixels" in out
    assert f"{instances}: image 1: id used twice" in out
    assert f"{instances}: image 2: height '24' is not a positive integer" in out


def test_corrupt_refs_pickle_is_an_error_message_not_a_traceback(handmade, capsys):
    (handmade.dataset_dir / "refs(unc).p").write_bytes(b"\x80\x04\x95" + b"\xff" * 9)
    assert _check(handmade) == 2
    assert "refs(unc).p: not a readable pickle (OverflowError" in capsys.readouterr().err
