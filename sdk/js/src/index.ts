/**
 * TypeScript client for the localvideo REST API (`localvideo serve`). fetch-based: Node 18+ and browsers.
 *
 *   const lv = new LocalVideoClient({ baseUrl: "http://127.0.0.1:8765" });
 *   const job = await lv.submit({ prompt: "a red fox in snow", model: "tiny-wan", steps: 4 });
 *   const done = await lv.wait(job.id, { onProgress: (j) => console.log(j.state, j.progress) });
 *   const mp4 = await lv.download(job.id); // Uint8Array
 *   const story = await lv.submitStory({ script: "[2s] a fox wakes\n[2s] it trots away", model: "tiny-wan" });
 *
 * Field names are the Python API's (prompt, negative_prompt, model, width, height, num_frames, fps, steps, guidance,
 * seed, …). Errors are `ApiError` with the server's `code`, `message`, `hint` and the HTTP `status`.
 */

export type JobState = "queued" | "running" | "succeeded" | "failed" | "cancelled" | "interrupted";
export type Phase = "queued" | "loading" | "denoising" | "decoding" | "encoding" | "joining" | "rendering" | "done";
export const TERMINAL_STATES: readonly JobState[] = ["succeeded", "failed", "cancelled", "interrupted"];

export interface JobRequest {
  prompt: string;
  negative_prompt?: string | null;
  model?: string;
  width?: number | null;
  height?: number | null;
  num_frames?: number | null;
  fps?: number | null;
  steps?: number | null;
  guidance?: number | null;
  seed?: number | null;
  strategy?: "auto" | "resident" | "model_offload" | "group_offload" | "group_offload_leaf" | "sequential_offload";
  vae_tiling?: boolean | null;
  /** Rewrite the prompt in the style the model's family was trained on (default true). */
  expand_prompt?: boolean;
  /** Transformer storage: auto (fp8 only when nothing else fits short of sequential offload), none, fp8, int8.
   *  (gguf needs a GGUF file, which the API does not take.) */
  quantization?: "auto" | "none" | "fp8" | "int8";
  /** Step cache, off by default: "fbc", "mag" or "taylor", optionally ":value" (e.g. "fbc:0.1", "taylor:3"). */
  step_cache?: string | null;
  /** Attention backend (flash/sage fall back to sdpa with a warning where not installed). */
  attention?: "sdpa" | "flash" | "sage";
}

/** A story (`submitStory`): one scene per line of `script`, e.g. "[2s] wide shot: a fox wakes", each generated and
 *  joined into one MP4. */
export interface StoryRequest {
  script: string;
  model?: string;
  /** `script` is a paragraph: one scene per sentence. */
  from_paragraph?: boolean;
  /** Seconds of crossfade at hard cuts (0: plain cuts). */
  crossfade_s?: number;
  /** Each scene starts from the previous one's last frame (null: when the model does image-to-video). */
  continuity?: boolean | null;
  /** Base seed; scene k (1-based) uses seed + k - 1. */
  seed?: number | null;
  fps?: number | null;
  width?: number | null;
  height?: number | null;
  steps?: number | null;
  guidance?: number | null;
  negative_prompt?: string | null;
  /** Length of scenes that give none (default: the model's default clip). */
  duration_s?: number | null;
  expand_prompt?: boolean;
}

/** One scene of a finished story (`JobResult.scenes`): frames [start_frame, end_frame) of the joined video. */
export interface StoryScene {
  index: number;
  text: string;
  seed: number;
  /** Frames generated for the scene. */
  frames: number;
  /** Frames of it in the joined video (a continued scene drops its copy of the previous scene's last frame). */
  kept: number;
  start_frame: number;
  end_frame: number;
  start_time_s: number;
  transition: "start" | "continued" | "cut" | "crossfade";
  task: "t2v" | "i2v";
}

export interface AnimationRequest {
  move?: "auto" | "zoom-in" | "zoom-out" | "pan-left" | "pan-right" | "orbit" | "dolly";
  width?: number;
  height?: number;
  fps?: number;
  duration_s?: number;
  num_frames?: number;
  parallax?: boolean | null;
  strength?: number;
  easing?: "linear" | "ease-in-out" | "ease-in-out-cubic" | "ease-out";
  seed?: number;
}

export interface JobProgress {
  phase: Phase;
  step: number;
  total: number;
  elapsed_s: number;
  eta_s: number | null;
  /** Stories: the scene being made (1-based) of `scenes`; null for other jobs. */
  scene: number | null;
  scenes: number | null;
  /**
   * One sentence saying what the job is doing when the phase alone would not say it truly, e.g. a running job in
   * phase "queued" waiting for a model another job is using, or to be retried after its Ray worker stopped.
   * Null otherwise; absent from servers older than this field.
   */
  message?: string | null;
}

export interface JobResult {
  bytes: number;
  frames: number;
  width: number;
  height: number;
  fps: number;
  duration_s: number;
  seed: number;
  model: string;
  random_weights: boolean;
  strategy: string;
  has_thumbnail: boolean;
  timings: Record<string, number>;
  notes: string[];
  warnings: string[];
  /** What the run gave up after running out of memory (e.g. "frames 81 → 49 after OOM while denoising"; stories:
   *  each prefixed "scene N: "). Empty: made as planned. */
  degraded: string[];
  /** Stories: one entry per scene; empty for other jobs. */
  scenes: StoryScene[];
}

export interface JobErrorInfo {
  error: string;
  message: string;
  hint: string | null;
}

export interface Job {
  id: string;
  kind: "text-to-video" | "image-to-video" | "story" | "photo-animation";
  state: JobState;
  request: JobRequest & Record<string, unknown>;
  progress: JobProgress | null;
  result: JobResult | null;
  error: JobErrorInfo | null;
  cancel_requested: boolean;
  attempts: number;
  /** What the service changed about the job, e.g. a request stored by an older localvideo migrated on retry. */
  notes: string[];
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
  version: number;
  links: { self: string; events: string; video: string | null; thumbnail: string | null };
}

export interface JobPage {
  jobs: Job[];
  total: number;
  limit: number;
  offset: number;
  next_offset: number | null;
}

export interface ModelInfo {
  id: string;
  name: string;
  family: string;
  tasks: string[];
  random_weights: boolean;
  licence: string;
  weights_gb: number;
  installed: boolean;
  built_on_first_use: boolean;
  /** A partial copy is here ("incomplete: missing transformer weights, …"): not installed; `pull_command` finishes it. */
  incomplete: string | null;
  pull_command: string | null;
  /** Image-to-video can also condition on a last frame (`submitImage(..., { lastImage })`). */
  supports_last_image: boolean;
  /** ...and needs one: an image-to-video job without a last frame is refused (first-and-last-frame models). */
  requires_last_image: boolean;
  fits: boolean;
  strategy: string | null;
  vae_tiling: boolean | null;
  peak_gb: number | null;
  reason: string | null;
}

export interface ClientOptions {
  /** Default: http://127.0.0.1:8765 */
  baseUrl?: string;
  /** Sent as `Authorization: Bearer <token>`; required when the server binds a non-loopback address. */
  token?: string;
  /** Custom fetch (tests, proxies). Default: the global fetch. */
  fetch?: typeof fetch;
}

export interface ListOptions {
  state?: JobState | JobState[];
  limit?: number;
  offset?: number;
}

export interface WaitOptions {
  onProgress?: (job: Job) => void;
  /** Give up (TimeoutError) after this many milliseconds. */
  timeoutMs?: number;
  /** Throw JobFailed unless the job succeeded. */
  raiseOnFailure?: boolean;
  signal?: AbortSignal;
}

export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  readonly hint: string | null;
  readonly details: Record<string, unknown>;

  constructor(status: number, code: string, message: string, hint: string | null = null,
              details: Record<string, unknown> = {}) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
    this.hint = hint;
    this.details = details;
  }
}

export class JobFailed extends ApiError {
  readonly job: Job;

  constructor(job: Job) {
    super(200, job.error?.error ?? job.state, job.error?.message ?? `Job ${job.id} ended ${job.state}.`,
          job.error?.hint ?? null);
    this.name = "JobFailed";
    this.job = job;
  }
}

export function isTerminal(job: Pick<Job, "state">): boolean {
  return TERMINAL_STATES.includes(job.state);
}

async function errorFrom(res: Response): Promise<ApiError> {
  const text = await res.text();
  try {
    const body = JSON.parse(text) as Record<string, unknown>;
    const { error, message, hint, ...details } = body;
    return new ApiError(res.status, String(error ?? "http_error"), String(message ?? res.statusText),
                        typeof hint === "string" ? hint : null, details);
  } catch {
    return new ApiError(res.status, "http_error", `HTTP ${res.status}: ${text.slice(0, 200)}`);
  }
}

/** Parses a text/event-stream body into events; yields `{event, data, id}` for each dispatched event. */
export async function* parseSSE(body: ReadableStream<Uint8Array>):
    AsyncGenerator<{ event: string; data: string; id: string | null }> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let event = "message";
  let data: string[] = [];
  let id: string | null = null;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let nl: number;
      while ((nl = buffer.search(/\r\n|\r|\n/)) >= 0) {
        if (buffer[nl] === "\r" && nl === buffer.length - 1) break; // maybe CRLF split across chunks: wait
        const line = buffer.slice(0, nl);
        buffer = buffer.slice(buffer[nl] === "\r" && buffer[nl + 1] === "\n" ? nl + 2 : nl + 1);
        if (line === "") {
          if (data.length) yield { event, data: data.join("\n"), id };
          event = "message";
          data = [];
          continue;
        }
        if (line.startsWith(":")) continue;
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        let value = colon < 0 ? "" : line.slice(colon + 1);
        if (value.startsWith(" ")) value = value.slice(1);
        if (field === "event") event = value;
        else if (field === "data") data.push(value);
        else if (field === "id") id = value;
      }
    }
  } finally {
    reader.releaseLock();
    await body.cancel().catch(() => undefined);
  }
}

export class LocalVideoClient {
  readonly baseUrl: string;
  private readonly token?: string;
  private readonly fetchImpl: typeof fetch;

  constructor(options: ClientOptions = {}) {
    this.baseUrl = (options.baseUrl ?? "http://127.0.0.1:8765").replace(/\/+$/, "");
    this.token = options.token;
    this.fetchImpl = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    return this.token ? { Authorization: `Bearer ${this.token}`, ...extra } : extra;
  }

  private async request(method: string, path: string, init: { body?: unknown; signal?: AbortSignal } = {}):
      Promise<Response> {
    let res: Response;
    try {
      res = await this.fetchImpl(this.baseUrl + path, {
        method,
        headers: this.headers(init.body !== undefined ? { "Content-Type": "application/json" } : {}),
        body: init.body !== undefined ? JSON.stringify(init.body) : undefined,
        signal: init.signal,
      });
    } catch (e) {
      if ((e as Error).name === "AbortError") throw e;
      throw new ApiError(0, "unreachable", `Could not reach the localvideo server at ${this.baseUrl}: ${e}`,
                         "Start it with `localvideo serve`.");
    }
    if (!res.ok) throw await errorFrom(res);
    return res;
  }

  private static jobPath(jobId: string): string {
    return `/v1/jobs/${encodeURIComponent(jobId)}`;
  }

  /** Queue a text-to-video job. */
  async submit(request: JobRequest): Promise<Job> {
    const body = Object.fromEntries(Object.entries(request).filter(([, v]) => v !== undefined));
    return (await this.request("POST", "/v1/jobs", { body })).json() as Promise<Job>;
  }

  /** Queue a story (kind "story"). With `image` (PNG, JPEG or WebP bytes) the first scene starts from it
   *  (image-to-video; models that only do image-to-video need it). */
  async submitStory(request: StoryRequest, options: { image?: Blob | Uint8Array } = {}): Promise<Job> {
    if (options.image !== undefined) {
      return this.multipart("/v1/jobs/story-from-image", { image: options.image }, request);
    }
    const body = Object.fromEntries(Object.entries(request).filter(([, v]) => v !== undefined));
    return (await this.request("POST", "/v1/jobs/story", { body })).json() as Promise<Job>;
  }

  /** Queue a photo animation (no model weights): a camera move on `image`. */
  async submitAnimation(image: Blob | Uint8Array, request: AnimationRequest = {}): Promise<Job> {
    return this.multipart("/v1/jobs/animate", { image }, request);
  }

  private async multipart(path: string, files: Record<string, Blob | Uint8Array | undefined>,
                          params: object): Promise<Job> {
    const form = new FormData();
    for (const [name, b] of Object.entries(files)) {
      if (b !== undefined) form.append(name, b instanceof Blob ? b : new Blob([new Uint8Array(b)]), name);
    }
    form.append("params", JSON.stringify(Object.fromEntries(Object.entries(params).filter(([, v]) => v !== undefined))));
    let res: Response;
    try {
      res = await this.fetchImpl(this.baseUrl + path, { method: "POST", headers: this.headers(), body: form });
    } catch (e) {
      throw new ApiError(0, "unreachable", `Could not reach the localvideo server at ${this.baseUrl}: ${e}`,
                         "Start it with `localvideo serve`.");
    }
    if (!res.ok) throw await errorFrom(res);
    return res.json() as Promise<Job>;
  }

  /** Queue an image-to-video job: `image` (PNG, JPEG or WebP bytes; checked by content on the server) is the
   *  first frame. */
  async submitImage(image: Blob | Uint8Array, request: JobRequest,
                    options: { lastImage?: Blob | Uint8Array } = {}): Promise<Job> {
    const form = new FormData();
    const blob = (b: Blob | Uint8Array) => (b instanceof Blob ? b : new Blob([new Uint8Array(b)]));
    form.append("image", blob(image), "image");
    if (options.lastImage !== undefined) form.append("last_image", blob(options.lastImage), "last_image");
    const params = Object.fromEntries(Object.entries(request).filter(([, v]) => v !== undefined));
    form.append("params", JSON.stringify(params));
    let res: Response;
    try {
      res = await this.fetchImpl(`${this.baseUrl}/v1/jobs/image-to-video`, {
        method: "POST", headers: this.headers(), body: form,
      });
    } catch (e) {
      throw new ApiError(0, "unreachable", `Could not reach the localvideo server at ${this.baseUrl}: ${e}`,
                         "Start it with `localvideo serve`.");
    }
    if (!res.ok) throw await errorFrom(res);
    return res.json() as Promise<Job>;
  }

  async get(jobId: string): Promise<Job> {
    return (await this.request("GET", LocalVideoClient.jobPath(jobId))).json() as Promise<Job>;
  }

  async list(options: ListOptions = {}): Promise<JobPage> {
    const q = new URLSearchParams();
    const states = options.state === undefined ? [] : Array.isArray(options.state) ? options.state : [options.state];
    for (const s of states) q.append("state", s);
    q.set("limit", String(options.limit ?? 50));
    q.set("offset", String(options.offset ?? 0));
    return (await this.request("GET", `/v1/jobs?${q}`)).json() as Promise<JobPage>;
  }

  async cancel(jobId: string): Promise<Job> {
    return (await this.request("POST", `${LocalVideoClient.jobPath(jobId)}/cancel`)).json() as Promise<Job>;
  }

  async retry(jobId: string): Promise<Job> {
    return (await this.request("POST", `${LocalVideoClient.jobPath(jobId)}/retry`)).json() as Promise<Job>;
  }

  async delete(jobId: string): Promise<void> {
    await this.request("DELETE", LocalVideoClient.jobPath(jobId));
  }

  /** The job now, then every change until it ends (Server-Sent Events). */
  async *events(jobId: string, signal?: AbortSignal): AsyncGenerator<Job> {
    const res = await this.request("GET", `${LocalVideoClient.jobPath(jobId)}/events`, { signal });
    if (!res.body) throw new ApiError(0, "no_stream", "The server sent no event stream.");
    for await (const ev of parseSSE(res.body)) {
      const job = JSON.parse(ev.data) as Job;
      yield job;
      if (isTerminal(job)) return;
    }
  }

  /** Follow the job's events until it ends; resolves with the final job. */
  async wait(jobId: string, options: WaitOptions = {}): Promise<Job> {
    const controller = new AbortController();
    const onAbort = () => controller.abort();
    options.signal?.addEventListener("abort", onAbort);
    let timedOut = false;
    const timer = options.timeoutMs === undefined ? undefined : setTimeout(() => {
      timedOut = true;
      controller.abort();
    }, options.timeoutMs);
    let last: Job | undefined;
    try {
      for await (const job of this.events(jobId, controller.signal)) {
        last = job;
        options.onProgress?.(job);
      }
    } catch (e) {
      if (timedOut) {
        const err = new Error(`Job ${jobId} did not finish within ${options.timeoutMs} ms.`);
        err.name = "TimeoutError";
        throw err;
      }
      throw e;
    } finally {
      if (timer !== undefined) clearTimeout(timer);
      options.signal?.removeEventListener("abort", onAbort);
    }
    if (!last || !isTerminal(last)) last = await this.get(jobId); // stream closed early (server shutting down)
    if (options.raiseOnFailure && last.state !== "succeeded") throw new JobFailed(last);
    return last;
  }

  /** URL of the MP4 (seekable: the server answers HTTP range requests), e.g. for a <video> element. */
  videoUrl(jobId: string): string {
    return `${this.baseUrl}${LocalVideoClient.jobPath(jobId)}/video`;
  }

  thumbnailUrl(jobId: string): string {
    return `${this.baseUrl}${LocalVideoClient.jobPath(jobId)}/thumbnail`;
  }

  /** The MP4 (or the JPEG thumbnail) as bytes. */
  async download(jobId: string, options: { thumbnail?: boolean } = {}): Promise<Uint8Array> {
    const what = options.thumbnail ? "thumbnail" : "video";
    const res = await this.request("GET", `${LocalVideoClient.jobPath(jobId)}/${what}`);
    return new Uint8Array(await res.arrayBuffer());
  }

  async models(): Promise<ModelInfo[]> {
    return (await this.request("GET", "/v1/models")).json() as Promise<ModelInfo[]>;
  }

  async system(): Promise<Record<string, unknown>> {
    return (await this.request("GET", "/v1/system")).json() as Promise<Record<string, unknown>>;
  }

  async health(): Promise<{ status: string; version: string }> {
    return (await this.request("GET", "/v1/health")).json() as Promise<{ status: string; version: string }>;
  }
}
