"""Shared fixtures: tiny real image datasets, per-test data directories, the real bundled backbone."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
# Each process would compile the bfloat16-mixed backbone graph (seconds) before its first prediction: the suite
# runs it eagerly (the same arithmetic); test_classifier_backbone compiles it and checks the two agree.
os.environ.setdefault("COMPILE_BACKBONE", "0")

from settings import Settings, load_settings  # noqa: E402

ARTIFACTS = ROOT / "test-artifacts"

# Three visually distinct classes: each image is a shape drawn with jitter, so the task is learnable
# from real pixels by a frozen ImageNet backbone.
CLASS_STYLES = {
    "circles": ((220, 60, 40), "ellipse"),
    "squares": ((40, 160, 60), "rectangle"),
    "stripes": ((50, 70, 200), "stripes"),
}


def make_image(kind: str, color, seed: int, size: int = 64) -> Image.Image:
    rng = np.random.default_rng(seed)
    background = tuple(int(c) for c in rng.integers(200, 255, 3))
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    jitter = [int(v) for v in rng.integers(-6, 7, 4)]
    fill = tuple(int(np.clip(c + rng.integers(-30, 30), 0, 255)) for c in color)
    box = (12 + jitter[0], 12 + jitter[1], size - 12 + jitter[2], size - 12 + jitter[3])
    if kind == "ellipse":
        draw.ellipse(box, fill=fill)
    elif kind == "rectangle":
        draw.rectangle(box, fill=fill)
    else:
        for x in range(0, size, 12):
            draw.rectangle((x + jitter[0] % 4, 0, x + 5 + jitter[0] % 4, size), fill=fill)
    return img


def write_dataset(root: Path, per_class: int = 10, classes=None, offset: int = 0) -> Path:
    """Write a class-per-folder JPEG dataset; returns ``root``."""
    for c_index, name in enumerate(classes or CLASS_STYLES):
        color, kind = CLASS_STYLES.get(name, ((120, 120, 120), "ellipse"))
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            make_image(kind, color, seed=1000 * c_index + i + offset).save(folder / f"{name}_{i + offset}.jpg", quality=92)
    return root


@pytest.fixture(scope="session")
def backbone_dir(tmp_path_factory) -> Path:
    """The real bundled backbone, converted once per test session."""
    from classifier.backbone import ensure_bundled_backbone
    return ensure_bundled_backbone(tmp_path_factory.mktemp("backbones"))


@pytest.fixture
def settings(tmp_path, backbone_dir) -> Settings:
    """Settings with a fresh DATA_DIR under tmp_path, holding a copy of the prepared backbone."""
    data = tmp_path / "data"
    shutil.copytree(backbone_dir, data / "backbones" / backbone_dir.name)
    return load_settings({"DATA_DIR": str(data)})


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory) -> Path:
    """30 labelled images in three class folders (read-only: copy before changing)."""
    return write_dataset(tmp_path_factory.mktemp("dataset") / "train", per_class=10)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def head_version(tmp_path_factory, backbone_dir, dataset_dir) -> Settings:
    """Settings of a session DATA_DIR holding one trained, active ``head`` version ``v1`` of the
    three-class dataset (read-only: copy ``data_dir`` before changing anything)."""
    from classifier.registry import LocalRegistry
    from training.config import TrainConfig
    from training.data import load_samples
    from training.run import train_version

    data = tmp_path_factory.mktemp("head-version") / "data"
    shutil.copytree(backbone_dir, data / "backbones" / backbone_dir.name)
    trained = load_settings({"DATA_DIR": str(data)})
    result = train_version(load_samples(dataset_dir).samples, TrainConfig(mode="head"), trained,
                           LocalRegistry(trained.models_dir))
    assert result["version"] == "v1"
    return trained


# --- the launched app (tests/test_app_api.py, tests/test_app_browser.py) ---------------------------

class RunningApp:
    """``python app.py`` in a subprocess on a free loopback port, working in ``workdir`` (its log, Gradio's
    temp files); ``env`` adds to a clean environment with DATA_DIR set."""

    OWNED_ENV = ("MONGODB_URI", "DATASET", "APP_USERS", "HF_TOKEN", "HUB_MODEL_ID", "HUB_DATASET_ID", "HF_ENDPOINT",
                 "MAX_BATCH", "MAX_UPLOAD_MB", "MAX_ARCHIVE_MB", "MAX_IMAGE_PIXELS", "SAMPLE_ROOTS", "SPACE_ID", "HF_ALLOWED_USERS",
                 "BACKBONE", "GRADIO_SERVER_PORT", "GRADIO_SERVER_NAME", "GRADIO_TEMP_DIR")

    def __init__(self, data_dir: Path, workdir: Path, env: dict[str, str]):
        import signal
        import socket
        import subprocess

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.data_dir = Path(data_dir)
        self.log_file = Path(workdir) / "app.log"
        environment = {k: v for k, v in os.environ.items() if k not in self.OWNED_ENV}
        environment.update(DATA_DIR=str(data_dir), GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1",
                           HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1",
                           GRADIO_TEMP_DIR=str(Path(workdir) / "gradio-tmp"), MPLCONFIGDIR=str(Path(workdir) / "mpl"),
                           **env)
        with open(self.log_file, "wb") as log:
            # SIGINT back to its default in the child: a shell's background job inherits it ignored, and then
            # Python installs no KeyboardInterrupt handler and stop() could not shut the app down cleanly.
            self.process = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=workdir, env=environment,
                                            stdout=log, stderr=subprocess.STDOUT,
                                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))

    def log(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace")[-4000:]

    def client(self, **kwargs):
        from gradio_client import Client

        return Client(self.url, verbose=False, download_files=False, **kwargs)

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until ``/status`` answers through gradio_client; fail with the app's log if it dies."""
        import time

        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"app.py exited with code {self.process.returncode}:\n{self.log()}")
            try:
                self.client().predict(api_name="/status")
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"app.py did not answer /status within {timeout_s:.0f} s:\n{self.log()}")
                time.sleep(0.5)

    def stop(self) -> None:
        """SIGINT, as Ctrl-C: Gradio closes and the engine stops its embedded database; SIGKILL after 20 s."""
        import signal
        import subprocess

        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


@pytest.fixture(scope="session")
def launch_app(tmp_path_factory):
    """A function ``launch_app(data_dir, **env) -> RunningApp`` (ready to serve); call ``.stop()`` when done.
    Any app still running at the end of the session is stopped here."""
    started: list[RunningApp] = []

    def launch(data_dir: Path, **env: str) -> RunningApp:
        app = RunningApp(Path(data_dir), tmp_path_factory.mktemp("app-run"), env)
        started.append(app)
        app.wait_ready()
        return app

    yield launch
    for app in started:
        app.stop()


# --- reliability/security tests: apps in their own working directory, killable; a database in its own process ---

_APP_ENV_OWNED = ("MONGODB_URI", "DATASET", "APP_USERS", "HF_TOKEN", "HUB_MODEL_ID", "HUB_DATASET_ID", "HF_ENDPOINT",
                  "MAX_BATCH", "MAX_UPLOAD_MB", "MAX_ARCHIVE_MB", "MAX_IMAGE_PIXELS", "SAMPLE_ROOTS", "SPACE_ID", "HF_ALLOWED_USERS",
                  "BACKBONE", "GRADIO_SERVER_PORT", "GRADIO_SERVER_NAME", "GRADIO_TEMP_DIR")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def data_dir_with_backbone(root: Path, backbone: Path) -> Path:
    """``root/data`` holding a copy of the prepared backbone, as a fresh install would after first start."""
    data = root / "data"
    shutil.copytree(backbone, data / "backbones" / backbone.name)
    return data


class IsolatedApp:
    """``python app.py`` with its own working directory, Gradio temp dir and log, so a test can prove what it
    wrote (nothing outside ``workdir`` and DATA_DIR) and can SIGKILL it. The same object restarts the app."""

    def __init__(self, data_dir: Path, workdir: Path, env: dict[str, str] | None = None):
        self.data_dir, self.workdir, self.env = Path(data_dir), Path(workdir), dict(env or {})
        self.log_file = self.workdir / "app.log"
        self.process = None
        self.url = ""

    def start(self, timeout_s: float = 150.0) -> "IsolatedApp":
        import subprocess
        import time

        import httpx

        self.workdir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/"
        environment = {k: v for k, v in os.environ.items() if k not in _APP_ENV_OWNED}
        environment.update(DATA_DIR=str(self.data_dir), GRADIO_SERVER_PORT=str(port), GRADIO_SERVER_NAME="127.0.0.1",
                           HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False", PYTHONUNBUFFERED="1",
                           GRADIO_TEMP_DIR=str(self.workdir / "gradio-tmp"), MPLCONFIGDIR=str(self.workdir / "mpl"))
        environment.update(self.env)
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=self.workdir, env=environment,
                                            stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"app.py exited with code {self.process.returncode}:\n{self.log()[-4000:]}")
            try:
                if httpx.get(self.url + "gradio_api/info", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"app.py did not serve within {timeout_s:.0f} s:\n{self.log()[-4000:]}")
            time.sleep(0.3)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace") if self.log_file.exists() else ""

    def client(self, headers: dict | None = None):
        from gradio_client import Client

        return Client(self.url, headers=headers, verbose=False, download_files=False)

    def kill(self) -> None:
        """SIGKILL: no handler, no cleanup, like a power cut of this process."""
        import signal

        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        import signal
        import subprocess

        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


class DatabaseProcess:
    """A SecantusDB server in a process of its own (``python -m secantus``) on a fixed port and storage folder,
    so a test can stop it (an outage) and start it again on the same port and data."""

    def __init__(self, storage: Path, port: int | None = None, auth: bool = False):
        self.storage, self.port, self.auth = Path(storage), port or free_port(), auth
        self.process = None

    @property
    def hosts(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0) -> "DatabaseProcess":
        import socket
        import subprocess
        import time

        self.storage.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "secantus", "--host", "127.0.0.1", "--port", str(self.port),
                "--storage-path", str(self.storage)] + (["--auth"] if self.auth else [])
        with open(self.storage.parent / f"{self.storage.name}.log", "ab") as log:
            # cwd: the storage's parent, so no ./secantusd.toml of the repository is picked up
            self.process = subprocess.Popen(args, cwd=self.storage.parent, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"the database process exited with code {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        pytest.fail("the database process did not listen in time")

    def stop(self) -> None:
        import subprocess

        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def create_user(self, user: str, password: str) -> None:
        """Provision a user the SecantusDB way: on the server started without --auth."""
        from pymongo import MongoClient

        client = MongoClient(f"mongodb://{self.hosts}/", serverSelectionTimeoutMS=5000)
        try:
            client.admin.command("createUser", user, pwd=password, roles=["root"])
        finally:
            client.close()


def tree_snapshot(*roots: Path, skip: tuple[Path, ...] = ()) -> dict[str, tuple[int, int]]:
    """Every file under ``roots`` (except under ``skip``) → (size, mtime_ns): compare two to see what was written."""
    skip = tuple(Path(p).resolve() for p in skip)
    found = {}
    for root in roots:
        for path in Path(root).rglob("*"):
            resolved = path.resolve() if path.is_symlink() else path
            if any(resolved == s or s in resolved.parents for s in skip) or not path.is_file():
                continue
            stat = path.stat()
            found[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return found


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims ``width``×``height`` pixels (a decompression bomb's header)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
            + chunk(b"IEND", b""))


def write_hostile_files(folder: Path) -> dict[str, Path]:
    """Files that must be refused one by one, each with the message fragment that says why:
    ``{name: (path, fragment)}`` (plus ``good.jpg``, a normal image, with fragment None)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = folder / "good.jpg"
    make_image("ellipse", (220, 60, 40), seed=4242).save(good, quality=90)
    data = good.read_bytes()
    contents = {
        "truncated.jpg": (data[: len(data) // 3], "damaged or truncated"),
        "notes.jpg": (b"these are my notes, not a photo\n" * 20, "not a readable image"),
        "program.jpg": (b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 8, "not a readable image"),
        "empty.jpg": (b"", "the file is empty"),
        "bomb.png": (png_claiming(30000, 30000), "over the limit"),
    }
    files = {"good.jpg": (good, None)}
    for name, (body, fragment) in contents.items():
        (folder / name).write_bytes(body)
        files[name] = (folder / name, fragment)
    return files


def write_odd_images(folder: Path) -> dict[str, Path]:
    """Valid images in unusual encodings that must be predicted: animated GIF, 16-bit PNG, CMYK JPEG,
    EXIF-rotated JPEG (stored 64×32, shown 32×64), 1×1 PNG."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {name: folder / name for name in ("animated.gif", "sixteen_bit.png", "cmyk.jpg", "rotated.jpg", "one_pixel.png")}
    frames = [make_image("ellipse", (220, 60, 40), seed=s) for s in (1, 2, 3)]
    frames[0].save(paths["animated.gif"], save_all=True, append_images=frames[1:], duration=80, loop=0)
    Image.fromarray((np.arange(48 * 48, dtype=np.uint32).reshape(48, 48) * 28).astype(np.uint16)).save(paths["sixteen_bit.png"])
    make_image("rectangle", (40, 160, 60), seed=7).convert("CMYK").save(paths["cmyk.jpg"], quality=90)
    rotated = make_image("stripes", (50, 70, 200), seed=8).resize((64, 32))
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    rotated.save(paths["rotated.jpg"], exif=exif, quality=90)
    Image.new("RGB", (1, 1), (10, 200, 30)).save(paths["one_pixel.png"])
    return paths


def write_hostile_zip(path: Path, outside: Path) -> Path:
    """A .zip with path-traversal and absolute entries (``outside`` is where an unsafe extractor would write),
    a nested zip, a text file, a 60 MB zero-filled entry (~60 kB compressed) and one good image ``ok/fine.jpg``."""
    import io
    import zipfile

    def jpeg(seed: int) -> bytes:
        buf = io.BytesIO()
        make_image("rectangle", (40, 160, 60), seed=seed).save(buf, format="JPEG", quality=90)
        return buf.getvalue()

    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("../../escaped.jpg", jpeg(501))
        archive.writestr(str(outside / "absolute.jpg"), jpeg(502))
        archive.writestr("ok/fine.jpg", jpeg(503))
        archive.writestr("inner.zip", b"PK\x05\x06" + b"\0" * 18)
        archive.writestr("readme.txt", "not an image")
        archive.writestr("huge.jpg", b"\0" * (60 * 1024 * 1024))
    return path
