// End-to-end: drive examples/dashboard.rs in Debian's Chromium.
//
//   node e2e/dashboard.test.mjs http://127.0.0.1:PORT [screenshot dir]
//
// Create a key restricted to the scope lists:read and read it from the
// page, call the protected endpoint with it (200) and the endpoint that
// needs emails:verify (403 insufficient_scope), restrict it to a network
// that excludes 127.0.0.1 (403), lift the restriction (200), grant it
// emails:verify (200), revoke it through the confirmation dialog (401),
// reload and see it listed as revoked, and read its history: created,
// edited three times, revoked. Exits non-zero on the first failed check;
// screenshots go to the given directory (default target/e2e).
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import assert from "node:assert/strict";

const base = process.argv[2] ?? "http://127.0.0.1:3000";
const shots = process.argv[3] ?? "target/e2e";
mkdirSync(shots, { recursive: true });

const demo = async (key) => {
  const response = await fetch(`${base}/api/demo`, { headers: { Authorization: `Bearer ${key}` } });
  return response.status;
};

// The endpoint that needs the scope emails:verify.
const verify = async (key) => {
  const response = await fetch(`${base}/api/verify`, { method: "POST", headers: { Authorization: `Bearer ${key}` } });
  const body = await response.json().catch(() => ({}));
  return { status: response.status, code: body.code, challenge: response.headers.get("www-authenticate") };
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: ["--no-sandbox", "--disable-dev-shm-usage"],
});
let step = "start";
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
try {
  step = "open the page";
  await page.goto(`${base}/`);
  await page.getByRole("heading", { name: "API Keys", level: 1 }).waitFor();

  step = "client-side validation of IP restrictions";
  const form = page.locator("#create-form");
  await form.getByLabel("Key name").fill("Production - Main Website");
  await form.getByLabel("IP restrictions").fill("10.0.0.0/33");
  await page.getByRole("button", { name: "Create New Key" }).click();
  await page.locator("#key-ips-error").waitFor({ state: "visible" });
  assert.match(await page.locator("#key-ips-error").textContent(), /10\.0\.0\.0\/33/);
  await page.screenshot({ path: `${shots}/01-invalid-ip.png`, fullPage: true });

  step = "create a key restricted to lists:read";
  await form.getByLabel("IP restrictions").fill("");
  await form.getByRole("checkbox", { name: "lists:read" }).check();
  await page.getByRole("button", { name: "Create New Key" }).click();
  const field = page.locator("#new-key");
  await field.waitFor({ state: "visible" });
  assert.equal(await field.getAttribute("readonly"), "");
  const key = await field.inputValue();
  assert.match(key, /^tm_live_[0-9A-Za-z]{32}$/);
  assert.match(await page.locator("#new-key-panel").textContent(), /shown only once/);
  await page.getByRole("button", { name: "Copy" }).isVisible();
  const row = page.locator("#keys tbody tr", { hasText: "Production - Main Website" });
  await row.waitFor();
  assert.ok(!(await page.locator("#keys").textContent()).includes(key.slice(8, 34)), "the table never shows the key");
  await page.screenshot({ path: `${shots}/02-created.png`, fullPage: true });

  assert.match(await row.locator("td.scopes").textContent(), /^lists:read$/);

  step = "the key works, but not where it lacks the scope";
  assert.equal(await demo(key), 200);
  const refused = await verify(key);
  assert.equal(refused.status, 403);
  assert.equal(refused.code, "insufficient_scope");
  assert.equal(refused.challenge, 'Bearer realm="api", error="insufficient_scope", scope="emails:verify"');

  step = "restrict it to a network without 127.0.0.1";
  await row.getByRole("button", { name: /^Edit/ }).click();
  await page.getByRole("dialog", { name: "Edit key" }).getByLabel("IP restrictions").fill("10.0.0.0/8");
  await page.getByRole("button", { name: "Save changes" }).click();
  await row.locator("td.ips", { hasText: "10.0.0.0/8" }).waitFor();
  assert.equal(await demo(key), 403);
  await page.screenshot({ path: `${shots}/03-restricted.png`, fullPage: true });

  step = "lift the restriction";
  await row.getByRole("button", { name: /^Edit/ }).click();
  await page.locator("#edit-ips").fill("");
  await page.getByRole("button", { name: "Save changes" }).click();
  await row.locator("td.ips", { hasText: "Any address" }).waitFor();
  assert.equal(await demo(key), 200);

  step = "grant it emails:verify";
  await row.getByRole("button", { name: /^Edit/ }).click();
  await page.getByRole("dialog", { name: "Edit key" }).getByRole("checkbox", { name: "emails:verify" }).check();
  await page.getByRole("button", { name: "Save changes" }).click();
  await row.locator("td.scopes", { hasText: "emails:verify, lists:read" }).waitFor();
  assert.equal((await verify(key)).status, 200);

  step = "revoke, after a confirmation";
  await row.getByRole("button", { name: /^Revoke/ }).click();
  const dialog = page.getByRole("dialog", { name: "Revoke this key?" });
  await dialog.waitFor();
  await page.screenshot({ path: `${shots}/04-confirm-revoke.png`, fullPage: true });
  await dialog.getByRole("button", { name: "Revoke key" }).click();
  await row.locator(".badge.revoked").waitFor();
  assert.equal(await demo(key), 401);

  step = "reload: still listed, marked revoked";
  await page.reload();
  const after = page.locator("#keys tbody tr", { hasText: "Production - Main Website" });
  await after.waitFor();
  assert.equal(await after.getAttribute("class"), "revoked");
  assert.match(await after.textContent(), /Revoked/);
  assert.equal(await after.getByRole("button", { name: /^(Edit|Revoke)/ }).count(), 0, "a revoked key cannot be edited");
  await page.screenshot({ path: `${shots}/05-revoked-after-reload.png`, fullPage: true });

  step = "the key's history: created, edited, revoked";
  await after.getByRole("button", { name: /^History/ }).click();
  const history = page.getByRole("dialog", { name: /^History of/ });
  await history.locator("tr.event").first().waitFor();
  const actions = await history.locator("tr.event td:nth-child(2)").allTextContents();
  assert.deepEqual(actions, ["Created", "Edited", "Edited", "Edited", "Revoked"]);
  const changes = await history.locator("tr.event td:nth-child(5)").allTextContents();
  assert.match(changes[0], /name: Production - Main Website; scopes: lists:read/);
  assert.match(changes[3], /scopes: lists:read → emails:verify, lists:read/);
  assert.match(changes[4], /status: active → revoked/);
  const from = await history.locator("tr.event td:nth-child(4)").allTextContents();
  assert.ok(from.every((address) => address === "127.0.0.1"), `every change came from the browser: ${from}`);
  assert.ok(!(await history.textContent()).includes(key.slice(8, 34)), "the history never shows the key");
  await page.screenshot({ path: `${shots}/06-history.png`, fullPage: true });
  console.log(`dashboard end-to-end: every step passed; screenshots in ${shots}`);
} catch (error) {
  await page.screenshot({ path: `${shots}/failure.png`, fullPage: true }).catch(() => {});
  console.error(`dashboard end-to-end failed at "${step}": ${error.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
