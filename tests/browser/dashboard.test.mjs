// The dashboard in a real browser against a real 3-node cluster (run.sh starts it and
// passes TALLY_NODES, TALLY_API_KEY, CHROMIUM and SCREENSHOTS).
//
// Headless Chromium is driven over the DevTools protocol by puppeteer-core (which never
// downloads a browser). The steps run in order and build on each other; after a failed
// step the rest are skipped. Every wait is bounded and says, when it runs out, what the
// page showed instead.
import { after, before, describe, it } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import puppeteer from "puppeteer-core";

const NODES = JSON.parse(process.env.TALLY_NODES || "[]");
const KEY = process.env.TALLY_API_KEY;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = process.env.SCREENSHOTS || "target/browser-screenshots";
// The bound for a number on the page to reach the value the events sent make it.
const UPDATE_MS = 10_000;
// The bound for the failure detector to drop a killed node and the survivors to take over.
const FAILOVER_MS = 45_000;

assert.equal(NODES.length, 3, "TALLY_NODES must name three nodes (run this through run.sh)");
assert.ok(KEY, "TALLY_API_KEY must hold a key with the scopes ingest, read and admin");

// Ids with characters that need escaping in HTML and encoding in URLs.
const CHANNEL = 'ch/<b>bold</b> & "é" 100%';
const CHANNEL2 = "ch-two";
const PLAYER = "p1 <i>x</i>/?#";
// The page is always opened on the first node, which is never killed; events go to another.
const PAGE_NODE = NODES[0];
let ingestNode = NODES[1];

// Event time: a fixed base in the recent past; every event is within 70 s after it, so no
// viewer reaches the 120 s viewer timeout however long the test takes.
const BASE = Date.now() - 90_000;
let eventNo = 0;
const ev = (player, kind, dt, fields = {}) =>
  ({ v: 1, id: `e-${++eventNo}`, ts: BASE + dt, player, kind, ...fields });

// `page` is the tab the helpers below act on (see inTab); `mainTab` is the first one.
let browser, page, mainTab;
let failed = false;
const pageErrors = [];
// The page's console and failed requests, printed when a step fails.
const pageLog = [];

/** POSTs events as NDJSON to the ingest node; every one must be accepted. */
async function send(events) {
  const r = await fetch(`${ingestNode.url}/v1/events`, {
    method: "POST",
    headers: { authorization: `Bearer ${KEY}`, "content-type": "application/x-ndjson" },
    body: events.map((e) => JSON.stringify(e)).join("\n"),
    signal: AbortSignal.timeout(15_000),
  });
  const body = await r.text();
  assert.equal(r.status, 202, `POST /v1/events answered ${r.status}: ${body}`);
  const answer = JSON.parse(body);
  assert.equal(answer.accepted, events.length, `POST /v1/events accepted ${answer.accepted} of ${events.length}: ${body}`);
  assert.deepEqual(answer.rejected, [], `POST /v1/events rejected some: ${body}`);
}

/** Waits until `check()` (run in the test) returns true; else fails with `describe()`. */
async function waitUntil(what, timeoutMs, check, describe) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      if (await check()) return;
      last = undefined;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) {
      const seen = await describe().catch((e) => `(could not read the page: ${e.message})`);
      throw new Error(`${what}: not within ${timeoutMs / 1000} s. The page shows: ${seen}${last ? `; last error: ${last.message}` : ""}`);
    }
    await new Promise((r) => setTimeout(r, 150));
  }
}

/** data-value of each data-field inside `scope` (a selector; the page if absent). */
function readFields(fields, scope) {
  return page.evaluate((fields, scope) => {
    const root = scope ? document.querySelector(scope) : document;
    const out = {};
    for (const f of fields) {
      const el = root && root.querySelector(`[data-field="${CSS.escape(f)}"]`);
      out[f] = el ? el.dataset.value : null;
    }
    return out;
  }, fields, scope || null);
}

/** Waits until every field shows exactly its expected value. */
async function expectFields(what, expected, timeoutMs = UPDATE_MS, scope) {
  const fields = Object.keys(expected);
  const want = Object.fromEntries(fields.map((f) => [f, String(expected[f])]));
  let seen = {};
  await waitUntil(what, timeoutMs, async () => {
    seen = await readFields(fields, scope);
    return fields.every((f) => seen[f] === want[f]);
  }, async () => fields.filter((f) => seen[f] !== want[f])
    .map((f) => `${f} = ${JSON.stringify(seen[f])} (expected ${want[f]})`).join(", "));
}

/**
 * The page must get its frames pushed over the WebSocket (with the key as access_token), not
 * from its polling fallback: the header says which, and a polled frame is marked.
 */
async function expectPushed(what) {
  let seen;
  await waitUntil(`${what}: frames over the WebSocket`, UPDATE_MS, async () => {
    seen = await page.evaluate(() => ({
      transport: document.getElementById("transport").dataset.value,
      polled: document.querySelector('[data-field="polled"]') !== null,
    }));
    return seen.transport === "websocket" && !seen.polled;
  }, async () => JSON.stringify(seen));
}

async function shot(name) {
  await page.screenshot({ path: `${SHOTS}/${name}.png`, fullPage: true });
}

/** Opens an entity page the way a person does: the search box. */
async function search(kind, id) {
  await page.select("#search-kind", kind);
  await page.$eval("#search-id", (el) => { el.value = ""; });
  await page.type("#search-id", id);
  await page.click("#search button[type=submit]");
  const hash = `#/${kind}/${encodeURIComponent(id)}`;
  await waitUntil(`the search box opens ${hash}`, 5000,
    async () => (await page.evaluate(() => location.hash)) === hash,
    () => page.evaluate(() => `location.hash = ${location.hash}`));
  // The page renders once its first answer arrives; a check before that finds nothing.
  await page.waitForSelector(`[data-field="${kind}-id"]`, { timeout: UPDATE_MS });
}

/**
 * Runs `fn` with the helpers acting on `tab`, in front: Chromium does not render a tab in the
 * background, so clicks and screenshots there wait for a frame that never comes.
 */
async function inTab(tab, fn) {
  const previous = page;
  page = tab;
  await tab.bringToFront();
  try {
    return await fn();
  } finally {
    page = previous;
    await previous.bringToFront();
  }
}

/** A new tab, its console and errors recorded like the first one's. */
async function newTab() {
  const tab = await browser.newPage();
  tab.setDefaultTimeout(10_000);
  tab.on("pageerror", (e) => { pageErrors.push(e.message); pageLog.push(`pageerror: ${e.message}`); });
  tab.on("console", (m) => pageLog.push(`console.${m.type()}: ${m.text()}`));
  tab.on("requestfailed", (r) => pageLog.push(`request failed: ${r.method()} ${r.url()}: ${r.failure()?.errorText}`));
  tab.on("response", (r) => { if (r.status() >= 400) pageLog.push(`${r.status()} ${r.request().method()} ${r.url()}`); });
  return tab;
}

/** Answers the page's key dialog (each tab has its own sessionStorage, so each asks). */
async function giveKey() {
  await page.waitForSelector("#key-dialog[open]", { timeout: UPDATE_MS });
  await page.type("#key-input", KEY);
  await page.click("#key-submit");
  await page.waitForSelector("#key-dialog:not([open])", { timeout: 5000 });
}

/** Each step: skipped after a failure, a screenshot of the page when it fails. */
function step(name, fn) {
  it(name, async (t) => {
    if (failed) { t.skip("an earlier step failed"); return; }
    try {
      await fn();
    } catch (e) {
      failed = true;
      const file = `failed-${name.replace(/[^a-z0-9]+/gi, "-").slice(0, 60)}`;
      await shot(file).catch(() => {});
      const shown = await page.evaluate(() => [document.getElementById("transport").textContent,
        ...[...document.querySelectorAll("#messages .message")].map((m) => m.textContent)]).catch(() => []);
      e.message += ` [transport: ${shown[0]}; messages: ${JSON.stringify(shown.slice(1))}; screenshot: ${SHOTS}/${file}.png]`;
      console.error(`the page's last log lines:\n  ${pageLog.slice(-25).join("\n  ")}`);
      throw e;
    }
  });
}

/** The cluster page's node rows and partition owners. */
function clusterTable() {
  return page.evaluate(() => ({
    nodes: [...document.querySelectorAll("#nodes tr[data-node]")].map((tr) => [tr.dataset.node, tr.dataset.status]),
    owners: [...document.querySelectorAll("#partitions tr[data-partition]")].map((tr) =>
      [tr.dataset.partition, tr.querySelector('[data-field="owner"]').dataset.value]),
  }));
}

describe("the dashboard", { timeout: 240_000 }, () => {
  before(async () => {
    mkdirSync(SHOTS, { recursive: true });
    const root = typeof process.getuid === "function" && process.getuid() === 0;
    browser = await puppeteer.launch({
      executablePath: CHROMIUM,
      headless: true,
      // As root Chromium refuses to start without --no-sandbox.
      args: [...(root ? ["--no-sandbox"] : []), "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"],
      defaultViewport: { width: 1280, height: 900 },
      timeout: 30_000,
      protocolTimeout: 30_000,
    });
    page = mainTab = await newTab();
  });

  after(async () => {
    if (browser) await browser.close();
  });

  step("asks for an API key on the first 401 and keeps it in sessionStorage", async () => {
    await page.goto(`${PAGE_NODE.url}/#/cluster`, { waitUntil: "load" });
    await page.waitForSelector("#key-dialog[open]", { timeout: UPDATE_MS });
    await shot("01-key-dialog");
    await giveKey();
    assert.equal(await page.evaluate(() => sessionStorage.getItem("tally.apiKey")), KEY);
    await expectPushed("after the key was given");
  });

  step("the cluster page lists every node, serving, and every partition owned", async () => {
    const ids = NODES.map((n) => n.id);
    let seen;
    await waitUntil("3 serving nodes and 8 partitions owned by them", 30_000, async () => {
      seen = await clusterTable();
      return seen.nodes.length === 3 && seen.nodes.every(([id, st]) => ids.includes(id) && st === "serving") &&
        seen.owners.length === 8 && seen.owners.every(([, o]) => ids.includes(o));
    }, async () => JSON.stringify(seen));
    await expectFields("cluster summary", { members: 3, gone: 0, partitions_owned: 8, partitions_unowned: 0 });
    await shot("02-cluster");
  });

  step("the channel page, opened from the search box, shows the id as text and the exact counters", async () => {
    await send([
      ev(PLAYER, "viewer_join", 0, { channel: CHANNEL }),
      ev("p2", "viewer_join", 1000, { channel: CHANNEL }),
      ev("p3", "viewer_join", 2000, { channel: CHANNEL }),
      ev(PLAYER, "follow", 3000, { channel: CHANNEL }),
      ev(PLAYER, "viewer_heartbeat", 30_000, { channel: CHANNEL }),
      ev(PLAYER, "match_end", 40_000, { match_id: "m1", kills: 3, deaths: 1, survival_secs: 300, placement: 2 }),
      ev(PLAYER, "purchase", 41_000, { item: "skin", amount: 499, currency: "USD" }),
      ev(PLAYER, "level_up", 42_000, { level: 7 }),
      ev("p2", "viewer_leave", 61_000, { channel: CHANNEL }),
    ]);
    await search("channel", CHANNEL);
    const title = await page.$eval('[data-field="channel-id"]', (el) => ({ text: el.textContent, elements: el.children.length }));
    assert.deepEqual(title, { text: CHANNEL, elements: 0 }, "the channel id must be shown as text, never as HTML");
    await expectFields("channel counters after the first events", {
      concurrent_viewers: 2, peak_concurrent: 3, joins: 3, leaves: 1, expirations: 0,
      unique_viewers: 3, watch_ms: 60000, follows: 1,
    });
    await expectPushed("the channel page");
    await shot("03-channel");
  });

  step("the channel page updates live, and its chart follows", async () => {
    await expectFields("the chart's latest sample", { "chart-line": 2 });
    await send([
      ev("p4", "viewer_join", 62_000, { channel: CHANNEL }),
      ev("p5", "viewer_join", 62_500, { channel: CHANNEL2 }),
    ]);
    await expectFields("channel counters after p4 joined", {
      concurrent_viewers: 3, peak_concurrent: 3, joins: 4, unique_viewers: 4, leaves: 1,
    });
    // One sample a second at most: the latest holds the value the counters show.
    await expectFields("the chart's latest sample after p4 joined", { "chart-line": 3 });
    await shot("04-channel-live");
  });

  step("the player page shows counters, channel preferences and recent changes", async () => {
    await search("player", PLAYER);
    assert.equal(await page.$eval('[data-field="player-id"]', (el) => el.textContent), PLAYER);
    await expectFields("player counters", {
      events: 6, matches: 1, kills: 3, deaths: 1, best_placement: 2, purchases: 1, level: 7, follows: 1,
      "revenue.USD": 499, current_channel: CHANNEL,
    });
    await expectFields("player's channel preferences", { watch_ms: 30000 }, UPDATE_MS,
      `#top-channels tr[data-channel="${CHANNEL.replace(/["\\]/g, "\\$&")}"]`);
    await send([ev(PLAYER, "match_end", 64_000, { match_id: "m2", kills: 2, deaths: 0, survival_secs: 500, placement: 1 })]);
    await expectFields("player counters after a second match", {
      events: 7, matches: 2, kills: 5, deaths: 1, best_placement: 1, best_survival_secs: 500,
    });
    await expectPushed("the player page");
    const recent = await page.$$eval("#recent li", (lis) => lis.map((li) => li.textContent));
    assert.ok(recent.some((line) => line.includes("kills 3 → 5")),
      `the recent changes must list "kills 3 → 5"; they are: ${JSON.stringify(recent)}`);
    await shot("05-player");
  });

  step("the top channels page lists the channels by concurrent viewers, live", async () => {
    await page.click('a[data-nav="top"]');
    let rows;
    const expectRows = (what, want) => waitUntil(`top channels ${what}`, UPDATE_MS, async () => {
      rows = await page.$$eval("#top tr[data-channel]", (trs) => trs.map((tr) => [tr.dataset.channel,
        ...["concurrent", "peak", "follows"].map((f) => tr.querySelector(`[data-field="${f}"]`).dataset.value)]));
      return JSON.stringify(rows) === JSON.stringify(want);
    }, async () => JSON.stringify(rows));
    await expectRows("(channel, concurrent, peak, follows)", [[CHANNEL, "3", "3", "1"], [CHANNEL2, "1", "1", "0"]]);
    await send([ev("p7", "viewer_join", 65_000, { channel: CHANNEL2 }), ev("p7", "follow", 65_100, { channel: CHANNEL2 })]);
    await expectRows("after p7 joined and followed the second channel", [[CHANNEL, "3", "3", "1"], [CHANNEL2, "2", "2", "1"]]);
    await shot("06-top");
  });

  // A second tab stays on the channel page through the kill: its subscription must go on
  // from the new owner without the page reloading.
  let channelTab, victim, ownerBefore;

  step("after kill -9 of a node the cluster page shows it gone and its partitions on the survivors", async () => {
    channelTab = await newTab();
    await inTab(channelTab, async () => {
      await page.goto(`${PAGE_NODE.url}/#/channel/${encodeURIComponent(CHANNEL)}`, { waitUntil: "load" });
      await giveKey();
      await expectFields("the second tab's channel counters", { concurrent_viewers: 3, joins: 4, unique_viewers: 4 });
      await expectPushed("the second tab");
    });
    // The channel's owner, unless it serves the page: then the killed node owns other partitions.
    const owner = (ownerBefore = await channelTab.$eval('[data-field="served_by"]', (el) => el.dataset.value));
    victim = NODES.find((n) => n.id === owner && n !== PAGE_NODE) || NODES[2];
    ingestNode = NODES.find((n) => n !== PAGE_NODE && n !== victim);
    console.log(`# killing ${victim.id} (pid ${victim.pid}); the channel's partition is owned by ${owner}`);

    await page.click('a[data-nav="cluster"]');
    await expectFields("cluster summary before the kill", { members: 3, partitions_unowned: 0 });
    process.kill(victim.pid, "SIGKILL");
    const survivors = NODES.filter((n) => n !== victim).map((n) => n.id);
    let seen;
    await waitUntil(`${victim.id} gone, every partition owned by ${survivors.join(" or ")}`, FAILOVER_MS, async () => {
      seen = await clusterTable();
      const status = Object.fromEntries(seen.nodes);
      return status[victim.id] === "gone" && survivors.every((id) => status[id] === "serving") &&
        seen.owners.length === 8 && seen.owners.every(([, o]) => survivors.includes(o));
    }, async () => JSON.stringify(seen));
    await expectFields("cluster summary after the kill", { members: 2, gone: 1, partitions_owned: 8, partitions_unowned: 0 });
    await expectPushed("the cluster page after the kill");
    await shot("07-cluster-after-kill");
  });

  step("the channel page left open through the kill counts the next event exactly", async () => {
    await send([ev("p6", "viewer_join", 66_000, { channel: CHANNEL })]);
    await inTab(channelTab, async () => {
      await expectFields("channel counters after the failover", {
        concurrent_viewers: 4, peak_concurrent: 4, joins: 5, unique_viewers: 5, leaves: 1, follows: 1,
      }, FAILOVER_MS);
      await expectPushed("the channel page after the failover");
      const servedBy = await page.$eval('[data-field="served_by"]', (el) => el.dataset.value);
      assert.notEqual(servedBy, victim.id, `the channel is still shown as served by the killed ${victim.id}`);
      const gap = await page.$('[data-field="gap"]');
      console.log(`# the channel's frames now come from ${servedBy}; a gap was marked: ${gap !== null}`);
      // Its source died: the first frame from the new owner says so (docs/API.md, "gap").
      if (ownerBefore === victim.id) assert.ok(gap, "the owner was killed, but the page shows no gap in the feed");
      await shot("08-channel-after-failover");
    });
  });

  step("the page raised no script error", async () => {
    assert.deepEqual(pageErrors, [], "uncaught errors in the page");
  });
});
