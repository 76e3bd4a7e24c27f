"""The local search page (pipelines/serve.py, search/page.py) on the small catalogue of
search_helpers: its pages through Starlette's test client (a product click, an upload, the 413
and the 404s of paths outside the media root), and a real headless chromium through selenium
that uploads a picture, types a title and finds the expected neighbour.

The browser test needs Debian's chromium and chromium-driver (``make media-packages``): it is
skipped without them, and fails instead with SCALE_REQUIRE_MEDIA_PACKAGES=1 (CI)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

import search_helpers

REQUIRE_ENV = "SCALE_REQUIRE_MEDIA_PACKAGES"


def test_media_file_stays_under_the_root(tmp_path) -> None:
    from scalemm.search.page import media_file

    root = (tmp_path / "media").resolve()
    (root / "images").mkdir(parents=True)
    (root / "images" / "a.jpg").write_bytes(b"x")
    (tmp_path / "secret.txt").write_text("no")
    (root / "images" / "link.jpg").symlink_to(tmp_path / "secret.txt")
    assert media_file(root, "images/a.jpg") == root / "images" / "a.jpg"
    for bad in ("../secret.txt", "images/../../secret.txt", str(tmp_path / "secret.txt"), "images/link.jpg",
                "images", "", "images/a.jpg\x00", "images/missing.jpg"):
        assert media_file(root, bad) is None, bad
    assert media_file(None, "images/a.jpg") is None


@pytest.fixture(scope="module")
def cat(tmp_path_factory) -> dict:
    return search_helpers.build(tmp_path_factory.getbasetemp() / "search-catalogue")


@pytest.fixture(scope="module")
def app(cat):
    from scalemm.search.engine import Searcher
    from scalemm.search.page import make_app

    return make_app(Searcher(cat["eval"], cat["run"]), k=5, max_upload_bytes=200_000)


@pytest.fixture(scope="module")
def client(app):
    from starlette.testclient import TestClient

    with TestClient(app) as c:
        yield c


@pytest.mark.slow
def test_pages(cat, client) -> None:
    p = search_helpers.queryable(cat)[0]
    home = client.get("/")
    assert home.status_code == 200 and "Catalogue (" in home.text and 'data-id="' in home.text
    assert "<script" not in home.text
    r = client.get("/", params={"id": p.id})
    assert r.status_code == 200 and f"<span id='query'>{p.id}</span>" in r.text and r.text.count('class="card"') == 5
    img = r.text.split('<img src="', 1)[1].split('"', 1)[0]
    assert img.startswith("/media/") and client.get(img).status_code == 200
    assert client.get("/", params={"id": "nope"}).status_code == 404
    # an upload and a title: the product itself first
    data = (cat["corpus"] / p.image).read_bytes()
    r = client.post("/search", files={"image": ("x.jpg", data, "image/jpeg")}, data={"title": p.title})
    assert r.status_code == 200
    assert r.text.split('class="card" data-id="', 1)[1].split('"', 1)[0] == p.id
    # a title alone; nothing at all; an upload over the limit
    assert client.post("/search", data={"title": p.title}).status_code == 200
    assert client.post("/search", data={"title": " "}).status_code == 400
    big = client.post("/search", files={"image": ("big.jpg", b"\0" * 300_000, "image/jpeg")}, data={"title": "x"})
    assert big.status_code == 413
    # not a picture: said on the page, the title still searched
    r = client.post("/search", files={"image": ("bad.jpg", b"not a jpeg", "image/jpeg")}, data={"title": p.title})
    assert r.status_code == 200 and "was left out: not a decodable image" in r.text


@pytest.mark.slow
def test_no_file_outside_the_media_root(cat, client, tmp_path) -> None:
    root = Path(cat["corpus"]).resolve()
    outside = root.parent / "outside.txt"
    outside.write_text("secret")
    link = root / "images" / "escape.jpg"
    if not link.exists():
        link.symlink_to(outside)
    assert client.get("/media/corpus.jsonl").status_code == 200  # under the root: served
    for path in ("/media/..%2Foutside.txt", "/media/%2e%2e/outside.txt", "/media/images/..%2F..%2Foutside.txt",
                 f"/media/{outside}", "/media//etc/passwd", "/media/images/escape.jpg", "/media/images/none.jpg",
                 "/media/"):
        r = client.get(path)
        assert r.status_code == 404 and "secret" not in r.text, path


def _chromium() -> tuple[str | None, str | None]:
    browser = next((shutil.which(b) for b in ("chromium", "chromium-browser") if shutil.which(b)), None)
    return browser, shutil.which("chromedriver")


@pytest.mark.slow
def test_browser_upload_finds_the_product(cat, app, tmp_path) -> None:
    browser, driver_path = _chromium()
    if browser is None or driver_path is None:
        msg = "chromium and chromium-driver are not installed (make media-packages installs them)"
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{msg}; {REQUIRE_ENV} is set")
        pytest.skip(msg)
    import uvicorn
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--user-data-dir={tmp_path / 'profile'}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    try:
        p = search_helpers.queryable(cat)[1]
        driver.get(f"http://127.0.0.1:{port}/")
        driver.find_element(By.NAME, "image").send_keys(str((cat["corpus"] / p.image).resolve()))
        driver.find_element(By.NAME, "title").send_keys(p.title)
        assert driver.find_elements(By.ID, "catalogue") and not driver.find_elements(By.ID, "results")
        driver.find_element(By.ID, "go").click()
        # While a page is replaced, chromedriver may answer a poll with "Node with given id does not
        # belong to the document" (a WebDriverException, not a stale-element one): a navigation
        # race, not a failure, so the waits poll through it and time out if the page never comes.
        wait = WebDriverWait(driver, 60, ignored_exceptions=(WebDriverException,))
        wait.until(ec.presence_of_element_located((By.ID, "results")))  # only the results page has it
        cards = driver.find_elements(By.CSS_SELECTOR, "#results .card")
        assert cards and cards[0].get_attribute("data-id") == p.id
        assert cards[0].find_element(By.TAG_NAME, "img").get_attribute("naturalWidth") not in (None, "0")
        # a click on a neighbour searches from it
        second = cards[1].get_attribute("data-id")
        cards[1].find_element(By.CSS_SELECTOR, "a.pid").click()
        wait.until(ec.text_to_be_present_in_element((By.ID, "query"), second))
    finally:
        driver.quit()
        server.should_exit = True
        thread.join(10)
