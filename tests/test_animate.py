"""The offline photo animator on real photographs (scikit-image's bundled public-domain samples).

Everything is checked on decoded video pixels: frame count/size/fps from the file, no empty borders in any frame,
camera motion measured (ORB similarity fits, template tracking) and monotone, and in parallax mode the subject and
the background measurably moving by different amounts. First/middle/last frames go to artifacts/animate/ for eyes.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import ARTIFACTS, run_cli
from localvideo.errors import InvalidRequest
from localvideo.media.probe import probe, read_frames
from localvideo.motion.animator import animate
from localvideo.motion.camera import MOVES, ease, plan_move

cv2 = pytest.importorskip("cv2")
skdata = pytest.importorskip("skimage.data")

SIZE, FRAMES, FPS = 256, 24, 12


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("photos")
    out = {}
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        p = folder / f"{name}.jpg"
        Image.fromarray(getattr(skdata, name)()).save(p, quality=95)
        out[name] = p
    return out


def empty_border_lines(frame: np.ndarray, depth: int = 2) -> list[str]:
    """Outer rows/columns that are flat and dark: what a warp leaves where it sampled outside the picture."""
    gray = frame.astype(np.float32).mean(axis=2)
    lines = {}
    for k in range(depth):
        lines |= {f"top{k}": gray[k], f"bottom{k}": gray[-1 - k], f"left{k}": gray[:, k],
                  f"right{k}": gray[:, -1 - k]}
    return [name for name, line in lines.items() if line.mean() < 16 and line.std() < 3]


def save_strip(frames: np.ndarray, name: str) -> None:
    folder = ARTIFACTS / "animate"
    folder.mkdir(parents=True, exist_ok=True)
    n = len(frames)
    for tag, i in (("first", 0), ("middle", n // 2), ("last", n - 1)):
        cv2.imwrite(str(folder / f"{name}-{tag}.png"), cv2.cvtColor(frames[i], cv2.COLOR_RGB2BGR))


def similarity_scale(f0: np.ndarray, f1: np.ndarray) -> tuple[float, float, float]:
    """(scale, dx, dy) of the dominant similarity mapping frame 0 onto frame 1 (ORB + RANSAC)."""
    orb = cv2.ORB_create(1500)
    g0, g1 = (cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in (f0, f1))
    k0, d0 = orb.detectAndCompute(g0, None)
    k1, d1 = orb.detectAndCompute(g1, None)
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(d0, d1)
    p0 = np.float32([k0[m.queryIdx].pt for m in matches])
    p1 = np.float32([k1[m.trainIdx].pt for m in matches])
    m, inliers = cv2.estimateAffinePartial2D(p0, p1, method=cv2.RANSAC, ransacReprojThreshold=2.0)
    assert m is not None and inliers.sum() >= 20, "too few feature matches to measure the camera"
    return float(np.hypot(m[0, 0], m[1, 0])), float(m[0, 2]), float(m[1, 2])


def track(f0: np.ndarray, f1: np.ndarray, cx: float, cy: float, r: int) -> tuple[int, int]:
    """Where the (2r)² patch of frame 0 centred at (cx, cy) went in frame 1 (template matching)."""
    g0, g1 = (cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in (f0, f1))
    x0, y0 = int(cx - r), int(cy - r)
    res = cv2.matchTemplate(g1, g0[y0:y0 + 2 * r, x0:x0 + 2 * r], cv2.TM_CCOEFF_NORMED)
    _, score, _, loc = cv2.minMaxLoc(res)
    assert score > 0.9, f"lost the patch at ({cx:.0f}, {cy:.0f}) (match {score:.2f})"
    return loc[0] - x0, loc[1] - y0


# -- camera paths (pure) -------------------------------------------------------------------------------------------
def test_easing_is_monotone_and_pinned():
    t = np.linspace(0, 1, 101)
    for name in ("linear", "ease-in-out", "ease-in-out-cubic", "ease-out"):
        e = ease(t, name)
        assert e[0] == 0 and abs(e[-1] - 1) < 1e-12 and np.all(np.diff(e) >= -1e-12)


@pytest.mark.parametrize("move", MOVES)
@pytest.mark.parametrize("layered", [False, True])
@pytest.mark.parametrize("image_size,out_size", [((512, 512), (256, 256)), ((640, 427), (256, 448)),
                                                 ((300, 900), (320, 180))])
def test_every_window_stays_inside_the_image(move, layered, image_size, out_size):
    plan = plan_move(move, image_size, out_size, 31, focus_center=(image_size[0] * 0.8, image_size[1] * 0.2),
                     focus_box=(0, 0, 50, 50), focus_confidence=0.9, layered=layered)
    assert plan.bg.inside() and (plan.fg is None or plan.fg.inside())
    assert (plan.fg is not None) == layered
    if plan.fg is not None:  # the two layers recompose the photo exactly at one frame
        gap = np.abs(plan.fg.windows() - plan.bg.windows()).max(axis=1)
        assert gap.min() < 1e-6 and gap.max() > 1.0


# -- every move on a real photo ------------------------------------------------------------------------------------
@pytest.mark.parametrize("move", MOVES + ("auto",))
def test_each_move_on_astronaut(photos, tmp_path, move):
    out = tmp_path / f"{move}.mp4"
    r = animate(photos["astronaut"], move, width=SIZE, height=SIZE, num_frames=FRAMES, fps=FPS, output=out)
    info = probe(out)
    assert (info.frames, info.width, info.height) == (FRAMES, SIZE, SIZE) and abs(info.fps - FPS) < 1e-6
    frames = read_frames(out)
    for i, f in enumerate(frames):
        assert not empty_border_lines(f), f"frame {i} of {move} has an empty border: {empty_border_lines(f)}"
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).mean() > 3, "the camera did not move"
    # the astronaut has a face and separates cleanly: the 2.5D path runs and says so
    assert r.render_path == "parallax:mediapipe-selfie"
    md = json.loads(info.tags["localvideo"])
    assert md["kind"] == "animate" and md["path"] == r.render_path and md["move"] == r.move
    assert md["source"]["name"] == "astronaut.jpg" and len(md["source"]["sha256"]) == 64
    assert md["focus"]["detector"] == "blazeface" and md["num_frames"] == FRAMES and md["fps"] == FPS
    assert "astronaut.jpg" in info.tags["title"] and "animate" in info.tags["comment"]
    side = json.loads(r.sidecar.read_text())
    assert side["file"]["frames"] == FRAMES and side["timings"]["total_s"] > 0
    if move == "auto":
        assert r.move == "dolly" and "auto move chose dolly" in md["notes"]
    if move in ("dolly", "zoom-in"):
        save_strip(frames, f"astronaut-{move}")


def test_zoom_is_monotone_on_a_plain_camera(photos, tmp_path):
    """coffee has no separable subject: camera-only; the measured scale grows every frame to the planned zoom."""
    r = animate(photos["coffee"], "zoom-in", width=320, height=240, num_frames=FRAMES, fps=FPS,
                output=tmp_path / "z.mp4")
    assert r.render_path == "camera-only:low-mask-confidence"
    frames = read_frames(r.path)
    # frame-to-frame fits (each a small, well-conditioned change; frame 0 → frame N would be noisy at 30 % zoom)
    steps = np.array([similarity_scale(a, b)[0] for a, b in zip(frames[:-1], frames[1:])])
    assert np.all(steps > 0.999), steps  # never zooms back out
    z0, z1 = r.metadata["camera"]["camera"]["zoom"]
    assert abs(np.prod(steps) - z1 / z0) < 0.03 * z1, (np.prod(steps), z1)
    for f in frames:
        assert not empty_border_lines(f)
    save_strip(frames, "coffee-zoom-in")


@pytest.mark.parametrize("move,sign", [("pan-left", 1), ("pan-right", -1)])
def test_pan_is_monotone(photos, tmp_path, move, sign):
    r = animate(photos["chelsea"], move, width=256, height=256, num_frames=FRAMES, fps=FPS,
                output=tmp_path / "p.mp4")
    frames = read_frames(r.path)
    g = [np.float32(cv2.cvtColor(f, cv2.COLOR_RGB2GRAY)) for f in frames]
    shifts = np.array([cv2.phaseCorrelate(g[0], gi)[0][0] for gi in g[1:]])
    assert np.all(np.diff(sign * shifts) > -0.3), shifts  # content slides one way only
    travel = r.metadata["camera"]["params"]["travel_px"]  # in working pixels
    x0, _, ww, _ = r.metadata["camera"]["camera"]["first"]
    assert abs(abs(shifts[-1]) - travel * 256 / ww) < 2.0


def test_parallax_moves_subject_and_background_differently(photos, tmp_path):
    measured = {}
    for parallax in (True, False):
        r = animate(photos["astronaut"], "pan-right", width=SIZE, height=SIZE, num_frames=FRAMES, fps=FPS,
                    output=tmp_path / f"par-{parallax}.mp4", parallax=parallax)
        md = r.metadata
        frames = read_frames(r.path)
        cam = md["camera"].get("foreground_camera", md["camera"]["camera"])
        x0, y0, ww, wh = cam["first"]
        ws = md["camera"]["working_scale"]
        fx, fy, fw, fh = md["focus"]["faces"][0]["box"]
        u, v = ((fx + fw / 2) * ws - x0) * SIZE / ww, ((fy + fh / 2) * ws - y0) * SIZE / wh
        face = track(frames[0], frames[-1], u, v, 20)
        backdrop = track(frames[0], frames[-1], 0.9 * SIZE, 0.2 * SIZE, 14)  # the shuttle, behind her
        measured[parallax] = (face, backdrop, r.render_path)
        if parallax:
            save_strip(frames, "astronaut-pan-right-parallax")
    (face, back, path), (face_c, back_c, path_c) = measured[True], measured[False]
    assert path == "parallax:mediapipe-selfie" and path_c == "camera-only:disabled"
    assert face[0] < 0 and back[0] < 0  # pan right: everything slides left…
    assert abs(face[0]) - abs(back[0]) >= 10, measured  # …the near subject clearly more than the far backdrop
    assert abs(face_c[0] - back_c[0]) <= 1, measured  # a plain camera moves both alike
    assert abs(face[1]) <= 1 and abs(back[1]) <= 1


def test_low_confidence_mask_falls_back_and_says_so(photos, tmp_path):
    r = animate(photos["chelsea"], "dolly", width=256, height=192, num_frames=12, fps=FPS,
                output=tmp_path / "c.mp4")
    assert r.render_path == "camera-only:low-mask-confidence" and not r.warnings
    seg = r.metadata["segmentation"]
    assert seg["method"] == "grabcut" and seg["confidence"] < 0.5 and "refused" in seg["reason"]
    r2 = animate(photos["chelsea"], "dolly", width=256, height=192, num_frames=12, fps=FPS,
                 output=tmp_path / "c2.mp4", parallax=True)
    assert r2.render_path == "camera-only:low-mask-confidence"
    assert r2.warnings and "Parallax was requested" in r2.warnings[0]
    assert json.loads(probe(r2.path).tags["localvideo"])["warnings"] == r2.warnings
    r3 = animate(photos["rocket"], "zoom-out", width=256, height=144, num_frames=12, fps=FPS,
                 output=tmp_path / "c3.mp4", parallax=False)
    assert r3.render_path == "camera-only:disabled" and r3.metadata["segmentation"] is None
    for f in read_frames(r3.path):
        assert not empty_border_lines(f)


def test_border_detector_catches_black_bars(photos):
    frame = np.asarray(Image.open(photos["coffee"]).convert("RGB").resize((256, 256)))
    assert not empty_border_lines(frame)
    padded = np.pad(frame[:, 3:], ((0, 0), (3, 0), (0, 0)))
    assert "left0" in empty_border_lines(padded)


def test_default_size_keeps_aspect_and_odd_sizes_round(photos, tmp_path):
    r = animate(photos["rocket"], "pan-left", duration_s=0.5, fps=FPS, output=tmp_path / "d.mp4")
    assert (r.width, r.height) == (640, 428) and r.frames == 6  # rocket is 640x427; 427 → 428 (even)
    r2 = animate(photos["rocket"], "zoom-in", width=201, height=113, num_frames=4, fps=FPS,
                 output=tmp_path / "o.mp4")
    assert (r2.width, r2.height) == (202, 114) and any("rounded" in n for n in r2.metadata["notes"])


@pytest.mark.parametrize("kwargs,match", [
    (dict(move="spin"), "Unknown move"),
    (dict(fps=0), "frame rate"),
    (dict(duration_s=1, num_frames=10), "not both"),
    (dict(num_frames=1), "number of frames"),
    (dict(width=8), "width"),
])
def test_bad_arguments(photos, tmp_path, kwargs, match):
    out = tmp_path / "bad.mp4"
    with pytest.raises(InvalidRequest, match=match):
        animate(photos["coffee"], **({"move": "zoom-in"} | kwargs), output=out)
    assert not out.exists()


def test_bad_images_are_refused_without_output(tmp_path):
    out = tmp_path / "x.mp4"
    for data, match in ((b"not an image", "not an image"), (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not an image")):
        with pytest.raises(InvalidRequest, match=match):
            animate(data, "zoom-in", output=out, num_frames=4)
    buf = Image.new("RGB", (1, 1))
    with pytest.raises(InvalidRequest, match="1x1"):
        animate(buf, "zoom-in", output=out, num_frames=4)
    assert not out.exists()


def test_cli_animate(photos, tmp_path):
    out = tmp_path / "cli.mp4"
    p = run_cli("animate", str(photos["astronaut"]), "--move", "orbit", "--width", "192", "--height", "192",
                "--frames", "8", "--fps", "8", "--output", str(out), "--json", timeout=120)
    assert p.returncode == 0, p.stderr
    res = json.loads(p.stdout)
    assert res["ok"] and res["render_path"] == "parallax:mediapipe-selfie" and res["frames"] == 8
    assert (res["metadata"]["easing"], res["metadata"]["seed"]) == ("ease-in-out", 0)  # the defaults, recorded
    eased = run_cli("animate", str(photos["coffee"]), "--move", "zoom-in", "--easing", "linear", "--seed", "7",
                    "--frames", "4", "--width", "128", "--height", "96", "-o", str(tmp_path / "e.mp4"), "--json",
                    timeout=120)
    assert eased.returncode == 0, eased.stderr
    assert (json.loads(eased.stdout)["metadata"]["easing"], json.loads(eased.stdout)["metadata"]["seed"]) == \
        ("linear", 7)
    wrong = run_cli("animate", str(photos["coffee"]), "--easing", "bouncy", timeout=60)
    assert wrong.returncode == 2 and "bouncy" in wrong.stderr and "Traceback" not in wrong.stderr
    assert probe(out).frames == 8
    bad = run_cli("animate", str(tmp_path / "missing.jpg"), "--json", timeout=60)
    assert bad.returncode == 2 and json.loads(bad.stdout)["error"] == "invalid_request"
    nopar = run_cli("animate", str(photos["coffee"]), "--move", "pan-left", "--no-parallax", "--frames", "4",
                    "--width", "128", "--height", "96", "--output", str(tmp_path / "new") + "/", timeout=120)
    assert nopar.returncode == 0 and "camera-only:disabled" in nopar.stdout
    (made,) = (tmp_path / "new").glob("*-animate-*-pan-left.mp4")  # a folder that did not exist, as generate makes
    assert probe(made).frames == 4
