
from mmnet.cli import main


def _rows(out):
    return {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}


def _check(made):
    return main(["data", "check", "--root", str(made.root), "--dataset", "refcoco", "--split-by", "unc", "--workers", "2"])


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
