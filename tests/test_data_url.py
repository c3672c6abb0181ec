"""http(s) images in metadata: fetched like DiffSynth (3 attempts, 1 s then 2 s between), from a loopback server."""
import functools
import http.server
import json
import threading

import pytest
from PIL import Image

from diffsynth.data import loading
from diffsynth.data.dataset import ImageRules, UnifiedDataset
from diffsynth.data.validate import validate_dataset


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    Image.new("RGB", (80, 48), (0, 200, 0)).save(tmp_path / "green.png")
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def sleeps(monkeypatch):
    """Record the retry sleeps instead of sleeping."""
    calls = []
    monkeypatch.setattr(loading, "_sleep", calls.append)
    return calls


def test_url_images_load_alone_and_in_lists(server, tmp_path, sleeps):
    rows = [{"image": f"{server}/green.png", "refs": [f"{server}/green.png", f"{server}/green.png"], "prompt": "g"}]
    (tmp_path / "m.json").write_text(json.dumps(rows))
    item = UnifiedDataset(tmp_path / "unused_base", tmp_path / "m.json", "image,refs", ImageRules(4096))[0]
    assert item["image"].size == (80, 48) and item["image"].getpixel((5, 5)) == (0, 200, 0)
    assert [im.size for im in item["refs"]] == [(80, 48), (80, 48)]
    assert sleeps == []


def test_failed_url_is_tried_three_times_with_diffsynth_sleeps(server, sleeps):
    with pytest.raises(RuntimeError, match=r"missing\.png after 3 attempts.*404"):
        loading.load_image(f"{server}/missing.png")
    assert sleeps == [1.0, 2.0]


def test_validation_reports_a_dead_url(server, tmp_path, sleeps):
    (tmp_path / "m.jsonl").write_text(json.dumps({"image": f"{server}/green.png", "prompt": "ok"}) + "\n"
                                      + json.dumps({"image": f"{server}/gone.png", "prompt": "bad"}) + "\n")
    report = validate_dataset(tmp_path, tmp_path / "m.jsonl", "image", ImageRules(4096))
    assert report.valid_rows == 1
    [problem] = report.problems
    assert problem["row"] == 1 and problem["column"] == "image" and "gone.png" in problem["reason"]
