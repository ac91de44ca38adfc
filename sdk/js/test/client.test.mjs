// The TypeScript SDK (built to dist/) against a live `localvideo serve` running tiny models.
// LOCALVIDEO_URL points at the server (tests/test_sdk_js.py starts one); LOCALVIDEO_API_TOKEN if it needs one.
import { test } from "node:test";
import assert from "node:assert/strict";

import { ApiError, JobFailed, LocalVideoClient, isTerminal, parseSSE } from "../dist/index.js";

const url = process.env.LOCALVIDEO_URL;
const FAST = { model: "tiny-wan", steps: 2, width: 128, height: 128, num_frames: 9 };
const SLOW = { model: "tiny-wan", steps: 40, width: 128, height: 128, num_frames: 33 };
const opts = { skip: url ? false : "LOCALVIDEO_URL is not set (run through tests/test_sdk_js.py)" };

function client() {
  return new LocalVideoClient({ baseUrl: url, token: process.env.LOCALVIDEO_API_TOKEN });
}

test("parseSSE handles split chunks, CRLF, comments and multi-line data", async () => {
  const text = ": hello\r\nid: 1\r\nevent: state\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\nid: 2\ndata: x\n\n";
  const bytes = new TextEncoder().encode(text);
  const stream = new ReadableStream({
    start(c) {
      for (let i = 0; i < bytes.length; i += 7) c.enqueue(bytes.slice(i, i + 7));
      c.close();
    },
  });
  const events = [];
  for await (const ev of parseSSE(stream)) events.push(ev);
  assert.deepEqual(events, [
    { event: "state", data: "{\"a\":\n1}", id: "1" },
    { event: "message", data: "x", id: "2" },
  ]);
});

test("submit, follow progress over SSE, download a real MP4", opts, async () => {
  const lv = client();
  assert.equal((await lv.health()).status, "ok");
  const job = await lv.submit({ prompt: "a paper plane over a city", seed: 4, ...FAST });
  assert.equal(job.state, "queued");
  assert.equal(job.request.seed, 4);
  assert.deepEqual(job.notes, [], "a new job has no notes");
  const seen = [];
  const done = await lv.wait(job.id, { onProgress: (j) => seen.push(j), timeoutMs: 120_000 });
  assert.equal(done.state, "succeeded");
  assert.equal(done.result.frames, 9);
  const versions = seen.map((j) => j.version);
  assert.deepEqual(versions, [...new Set(versions)].sort((a, b) => a - b), "versions strictly increase");
  assert.ok(seen.some((j) => j.progress?.phase === "denoising"));
  const denoising = seen.find((j) => j.progress?.phase === "denoising").progress;
  // what JobProgress declares: scene/scenes (null outside stories) and message (null when there is nothing to say)
  assert.deepEqual([denoising.scene, denoising.scenes, denoising.message], [null, null, null]);
  assert.ok(isTerminal(seen.at(-1)));

  const mp4 = await lv.download(job.id);
  assert.equal(mp4.length, done.result.bytes);
  assert.equal(new TextDecoder().decode(mp4.slice(4, 8)), "ftyp", "an MP4 container");
  const thumb = await lv.download(job.id, { thumbnail: true });
  assert.deepEqual([...thumb.slice(0, 3)], [0xff, 0xd8, 0xff]);

  const ranged = await fetch(lv.videoUrl(job.id), { headers: { Range: "bytes=0-15" } });
  assert.equal(ranged.status, 206);
  assert.equal((await ranged.arrayBuffer()).byteLength, 16);

  const page = await lv.list({ state: "succeeded", limit: 1 });
  assert.equal(page.jobs.length, 1);
  assert.equal(page.jobs[0].state, "succeeded");
  const models = await lv.models();
  assert.ok(models.find((m) => m.id === "tiny-wan")?.installed);
  const flf2v = models.find((m) => m.id === "tiny-wan-flf2v");
  // a first-and-last-frame model says it needs the last frame, and fits when planned with both frames
  assert.deepEqual([flf2v.supports_last_image, flf2v.requires_last_image, flf2v.fits], [true, true, true]);
  const plain = models.find((m) => m.id === "tiny-wan");
  assert.deepEqual([plain.supports_last_image, plain.requires_last_image], [false, false]);
  // image-to-video: the first frame of the video we just made, as the input image
  const moving = await lv.submitImage(thumb, { prompt: "the frame comes alive", ...FAST });
  assert.equal(moving.kind, "image-to-video");
  assert.equal((await lv.wait(moving.id, { timeoutMs: 120_000 })).state, "succeeded");
  await assert.rejects(lv.submitImage(new TextEncoder().encode("plain text"), { prompt: "x", model: "tiny-wan" }),
                       (e) => e instanceof ApiError && e.status === 415);

  const anim = await lv.submitAnimation(thumb, { move: "zoom-in", width: 128, height: 128, num_frames: 12 });
  assert.equal(anim.kind, "photo-animation");
  const animDone = await lv.wait(anim.id, { timeoutMs: 120_000 });
  assert.equal(animDone.state, "succeeded");
  assert.equal(animDone.result.frames, 12);

  await lv.delete(job.id);
  await assert.rejects(lv.get(job.id), (e) => e instanceof ApiError && e.status === 404 && e.code === "not_found");
});

test("submitStory: scenes joined into one MP4, from text and from an uploaded first frame", opts, async () => {
  const lv = client();
  const story = { script: "[5f] a kite rises\n[5f] it loops over the dunes", model: "tiny-wan", width: 64, height: 64,
                  steps: 2, seed: 11 };
  const plain = await lv.submitStory(story);
  assert.equal(plain.kind, "story");
  assert.equal(plain.request.seed, 11);
  const done = await lv.wait(plain.id, { timeoutMs: 120_000, raiseOnFailure: true });
  // 5 + 5 frames, the second scene continues from the first one's last frame (its copy of it dropped): 9
  assert.equal(done.result.frames, 9);
  assert.deepEqual(done.result.scenes.map((s) => [s.start_frame, s.end_frame, s.transition, s.task]),
                   [[0, 5, "start", "t2v"], [5, 9, "continued", "i2v"]]);
  assert.deepEqual(done.result.degraded, []);
  const mp4 = await lv.download(plain.id);
  assert.equal(mp4.length, done.result.bytes);
  assert.equal(new TextDecoder().decode(mp4.slice(4, 8)), "ftyp");

  const thumb = await lv.download(plain.id, { thumbnail: true });
  const fromImage = await lv.submitStory(story, { image: thumb });
  assert.equal(fromImage.request.image, "uploaded:image.jpg");
  const imageDone = await lv.wait(fromImage.id, { timeoutMs: 120_000, raiseOnFailure: true });
  assert.equal(imageDone.result.frames, 9);
  assert.deepEqual(imageDone.result.scenes.map((s) => s.task), ["i2v", "i2v"], "the first scene starts from the image");
  await assert.rejects(lv.submitStory(story, { image: new TextEncoder().encode("plain text") }),
                       (e) => e instanceof ApiError && e.status === 415);
  await assert.rejects(lv.submitStory({ script: "a fox", model: "wan2.1-i2v-14b-480p" }),
                       (e) => e instanceof ApiError && e.status === 422 && e.hint.includes("story-from-image"));
});

test("cancel a running job, retry, typed errors", opts, async () => {
  const lv = client();
  const job = await lv.submit({ prompt: "slow", ...SLOW });
  for await (const j of lv.events(job.id)) {
    if (j.progress?.phase === "denoising" && j.progress.step >= 1) break;
  }
  assert.equal((await lv.cancel(job.id)).cancel_requested, true);
  const final = await lv.wait(job.id, { timeoutMs: 60_000 });
  assert.equal(final.state, "cancelled");
  await assert.rejects(lv.wait(job.id, { raiseOnFailure: true, timeoutMs: 10_000 }),
                       (e) => e instanceof JobFailed && e.job.state === "cancelled");
  await assert.rejects(lv.download(job.id), (e) => e instanceof ApiError && e.status === 404);
  assert.equal((await lv.retry(job.id)).state, "queued");
  await lv.cancel(job.id);
  assert.equal((await lv.wait(job.id, { timeoutMs: 60_000 })).state, "cancelled");

  await assert.rejects(lv.submit({ prompt: "x", model: "wan2.1-t2v-1.3b", width: 256, height: 256, num_frames: 17 }),
                       (e) => e instanceof ApiError && e.status === 409 && e.hint.includes("localvideo models pull"));
  await assert.rejects(lv.submit({ prompt: "x", model: "no-such-model" }),
                       (e) => e instanceof ApiError && e.status === 422 && e.code === "unknown_model");
  await assert.rejects(lv.get("../../etc/passwd"), (e) => e instanceof ApiError && e.status === 404);
  const dead = new LocalVideoClient({ baseUrl: "http://127.0.0.1:9" });
  await assert.rejects(dead.health(), (e) => e instanceof ApiError && e.code === "unreachable");
});
