// A small driver of Debian's Chromium for tests/integration/test_status_page.py.
// Reads one JSON command per line on stdin, answers one JSON line per command on stdout:
//   {"op": "goto", "url": ..., "width": w, "height": h}
//   {"op": "eval", "js": "<expression>"}            -> {"ok": true, "value": ...}
//   {"op": "wait", "js": "<expression>", "timeout_ms": n}  (until truthy)
//   {"op": "viewport", "width": w, "height": h}
//   {"op": "screenshot", "path": ..., "full_page": bool}
//   {"op": "press", "key": "Tab"}                   -> the focused element's outerHTML head
//   {"op": "close"}
// An error answers {"ok": false, "error": ...}; the driver goes on with the next line.
import { chromium } from "playwright-core";
import { createInterface } from "node:readline";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";
const userDataDir = mkdtempSync(join(tmpdir(), "vsmcp-chromium-"));
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  // The page forbids eval (its CSP); the driver's waits evaluate strings.
  bypassCSP: true,
  viewport: { width: 1280, height: 800 },
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const page = context.pages()[0] || (await context.newPage());
const consoleErrors = [];
page.on("console", (m) => { if (m.type() === "error") consoleErrors.push(m.text()); });
page.on("pageerror", (e) => consoleErrors.push(String(e)));

async function run(cmd) {
  switch (cmd.op) {
    case "goto":
      if (cmd.width) await page.setViewportSize({ width: cmd.width, height: cmd.height });
      await page.goto(cmd.url, { waitUntil: "load" });
      return null;
    case "viewport":
      await page.setViewportSize({ width: cmd.width, height: cmd.height });
      return null;
    case "eval":
      return await page.evaluate(cmd.js);
    case "wait":
      await page.waitForFunction(cmd.js, null, { timeout: cmd.timeout_ms ?? 30000, polling: 200 });
      return await page.evaluate(cmd.js);
    case "screenshot":
      await page.screenshot({ path: cmd.path, fullPage: !!cmd.full_page });
      return cmd.path;
    case "press":
      await page.keyboard.press(cmd.key);
      return await page.evaluate(() => {
        const a = document.activeElement;
        return a ? { tag: a.tagName, id: a.id, text: (a.textContent || "").trim().slice(0, 60) } : null;
      });
    case "errors":
      return consoleErrors;
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

const lines = createInterface({ input: process.stdin });
console.log(JSON.stringify({ ok: true, value: "ready" }));
for await (const line of lines) {
  if (!line.trim()) continue;
  const cmd = JSON.parse(line);
  if (cmd.op === "close") break;
  try {
    console.log(JSON.stringify({ ok: true, value: await run(cmd) }));
  } catch (e) {
    console.log(JSON.stringify({ ok: false, error: String(e && e.message || e) }));
  }
}
await context.close();
