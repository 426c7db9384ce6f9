// The chat page in a real browser: Debian's chromium, headless, driven by playwright-core,
// against `smolbot serve --stub` on a free local port. Covers what handler tests cannot see:
// HTMX and the SSE extension swapping the streamed fragments, the Thinking block collapsing,
// Stop (Esc) mid-stream, markup from the user staying inert under the CSP, a failed send
// keeping the typed text, the server dying mid-stream, and a phone-sized screen.
//
// Needs `target/debug/smolbot` (or SMOLBOT_BIN) and /usr/bin/chromium (or CHROMIUM);
// screenshots go to target/screenshots/.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const BINARY = process.env.SMOLBOT_BIN || join(ROOT, "target", "debug", "smolbot");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = join(ROOT, "target", "screenshots");
// Generous for a debug build on a loaded CI machine; the stub itself starts in well under 1 s.
const STARTUP_MS = 60_000;
const ANSWER_MS = 30_000;

/** Starts `smolbot serve --stub --port 0` and resolves with its URL once it listens. */
function startServer(tokensPerSecond) {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(BINARY, ["serve", "--stub", "--port", "0", "--host", "127.0.0.1"], {
      env: { ...process.env, SMOLBOT_STUB_TOKENS_PER_SECOND: String(tokensPerSecond), RUST_LOG: "info" },
      stdio: ["ignore", "ignore", "pipe"],
    });
    let log = "";
    const timer = setTimeout(() => reject(new Error(`server did not start:\n${log}`)), STARTUP_MS);
    child.on("error", reject);
    child.on("exit", (code) => reject(new Error(`server exited with ${code}:\n${log}`)));
    child.stderr.on("data", (chunk) => {
      log += chunk;
      const match = /on (http:\/\/127\.0\.0\.1:\d+)/.exec(log);
      if (match) {
        clearTimeout(timer);
        resolvePromise({ child, url: match[1] });
      }
    });
  });
}

let server;
let context;
let profile;

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  server = await startServer(40);
  profile = mkdtempSync(join(tmpdir(), "smolbot-chromium-"));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
    viewport: { width: 1000, height: 800 },
  });
});

after(async () => {
  if (context) await context.close();
  if (server) server.child.kill();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

/** A fresh tab on the chat page that fails the test on any script error or dialog. */
async function openPage(viewport) {
  const page = await context.newPage();
  if (viewport) await page.setViewportSize(viewport);
  const problems = [];
  page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
  page.on("dialog", (dialog) => {
    problems.push(`dialog: ${dialog.message()}`);
    dialog.dismiss();
  });
  page.on("console", (msg) => {
    if (msg.type() === "error" && !/Failed to load resource/.test(msg.text())) {
      problems.push(`console: ${msg.text()}`);
    }
  });
  await page.goto(server.url + "/");
  await page.waitForFunction(() => window.htmx && document.querySelector("#composer"));
  return { page, problems };
}

async function send(page, text) {
  await page.fill("#message", text);
  await page.press("#message", "Enter");
}

test("a message streams, thinking collapses when the answer starts", async () => {
  const { page, problems } = await openPage();
  await send(page, "Hello there");
  await page.locator(".msg.user .bubble", { hasText: "Hello there" }).waitFor();
  assert.equal(await page.inputValue("#message"), "", "the box clears once the server took it");
  await page.locator("details.thinking[open] .reasoning span").first().waitFor();
  assert.equal(await page.locator(".msg.assistant.streaming").count(), 1);
  assert.ok(await page.locator("button.send").isDisabled(), "no second send while streaming");
  await page.screenshot({ path: join(SHOTS, "1-thinking.png") });

  const answer = page.locator(".msg.assistant .answer");
  await page.waitForFunction(() => document.querySelector(".answer").textContent.length > 0);
  assert.equal(await page.locator("details.thinking[open]").count(), 0, "collapsed once the answer starts");
  assert.match(await page.locator("details.thinking summary").textContent(), /Thought for/);
  const early = (await answer.textContent()).length;
  await page.waitForTimeout(400);
  const later = (await answer.textContent()).length;
  assert.ok(later > early, `the answer grows token by token (${early} → ${later})`);

  await page.locator(".meta .stats").waitFor({ timeout: ANSWER_MS });
  assert.match(await page.locator(".meta .stats").textContent(), /first token .* tokens\/s · \d+ tokens/);
  assert.equal(await answer.locator("table").count(), 1);
  assert.equal(await answer.locator(".code button.copy").count(), 1);
  assert.equal(await page.locator(".msg.assistant.streaming").count(), 0);
  assert.ok(await page.locator("button.send").isEnabled());
  await page.screenshot({ path: join(SHOTS, "2-answer.png"), fullPage: true });

  // Second turn in the same conversation, thinking off.
  await page.uncheck("input[name=thinking]");
  await send(page, "And once more");
  await page.locator(".meta .stats").nth(1).waitFor({ timeout: ANSWER_MS });
  assert.equal(await page.locator(".msg.assistant").nth(1).locator("details.thinking").count(), 0);
  assert.deepEqual(problems, []);
  await page.close();
});

test("Esc stops the answer on the server mid-stream", async () => {
  const { page, problems } = await openPage();
  await send(page, "Tell me something long");
  await page.locator(".reasoning span").first().waitFor();
  await page.keyboard.press("Escape");
  await page.locator(".meta .note", { hasText: "Stopped." }).waitFor({ timeout: 5_000 });
  assert.equal(await page.locator(".meta .stats").count(), 0);
  assert.equal(await page.locator(".answer table").count(), 0, "stopped before the answer's table");
  await page.waitForFunction(() => !document.querySelector("button.send").disabled);
  await page.screenshot({ path: join(SHOTS, "3-stopped.png") });
  // The server freed the conversation: the next message is accepted.
  await send(page, "Next question");
  await page.locator(".msg.user", { hasText: "Next question" }).waitFor();
  await page.locator(".meta .stats").waitFor({ timeout: ANSWER_MS });
  assert.deepEqual(problems, []);
  await page.close();
});

test("markup in a message renders inert", async () => {
  const { page, problems } = await openPage();
  const payload = '<img src=x onerror="window.__xss=1"> <script>window.__xss=2</script> **bold**';
  await send(page, payload);
  await page.locator(".meta .stats").waitFor({ timeout: ANSWER_MS });
  assert.equal(await page.evaluate(() => window.__xss), undefined);
  assert.equal(await page.locator("#messages img, #messages script").count(), 0);
  assert.equal(await page.locator(".msg.user .bubble").textContent(), payload);
  await page.screenshot({ path: join(SHOTS, "4-xss.png") });
  assert.deepEqual(problems, []);
  await page.close();
});

test("tool calls show as cards, not XML", async () => {
  const { page, problems } = await openPage();
  await page.check("input[name=tools]");
  await send(page, "What is the weather in Lyon?");
  await page.locator(".tool-card").waitFor({ timeout: ANSWER_MS });
  assert.match(await page.locator(".tool-card .tool-name").textContent(), /get_weather/);
  assert.match(await page.locator(".tool-card .tool-args").textContent(), /"location": "Lyon"/);
  await page.locator(".meta .stats").waitFor({ timeout: ANSWER_MS });
  assert.doesNotMatch(await page.locator(".msg.assistant").textContent(), /tool_call/);
  assert.deepEqual(problems, []);
  await page.close();
});

test("a failed send shows the error and keeps the typed text", async () => {
  const { page } = await openPage();
  await page.route("**/chat/send", (route) =>
    route.fulfill({ status: 503, contentType: "text/plain", body: "the server is busy" }),
  );
  await send(page, "Please keep me");
  await page.locator("#error:not([hidden])").waitFor();
  assert.match(await page.locator("#error").textContent(), /503.*the server is busy/);
  assert.equal(await page.inputValue("#message"), "Please keep me");
  await page.close();
});

test("phone-sized screen: no sideways scrolling, composer in view", async () => {
  const { page, problems } = await openPage({ width: 390, height: 844 });
  await send(page, "Hello from a phone");
  await page.locator(".meta .stats").waitFor({ timeout: ANSWER_MS });
  const widths = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  assert.ok(widths[0] <= widths[1], `page is ${widths[0]} px wide in a ${widths[1]} px screen`);
  assert.ok(await page.locator("#message").isVisible());
  assert.ok(await page.locator("button.send").isVisible());
  await page.screenshot({ path: join(SHOTS, "5-phone.png") });
  assert.deepEqual(problems, []);
  await page.close();
});

test("the server dying mid-stream is reported and what streamed stays", async () => {
  const own = await startServer(20);
  const page = await context.newPage();
  try {
    await page.goto(own.url + "/");
    await page.waitForFunction(() => window.htmx);
    await send(page, "Hello");
    await page.locator(".reasoning span").first().waitFor();
    own.child.removeAllListeners("exit");
    own.child.kill("SIGKILL");
    await page.locator("#error:not([hidden])").waitFor({ timeout: 10_000 });
    assert.match(await page.locator("#error").textContent(), /connection to the server was lost/);
    assert.ok((await page.locator(".reasoning").textContent()).length > 0, "streamed text kept");
    assert.equal(await page.locator(".msg.assistant.streaming").count(), 0);
    await page.screenshot({ path: join(SHOTS, "6-server-gone.png") });
  } finally {
    own.child.kill("SIGKILL");
    await page.close();
  }
});
