// Drives a weir job's dashboard in Debian's headless Chromium (playwright-core, no browser
// download) for tests/dashboard.rs, and prints what the page showed as one JSON document:
// the graph, an operator's subtasks, the checkpoint table, with the /job and /checkpoints
// answers of the very poll the page had rendered, so the test can compare them.
//
//   node drive.mjs <dashboard url> <screenshot dir> [--select UID] [--savepoint]

import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

const [url, shots, ...flags] = process.argv.slice(2);
const flag = (name) => flags.includes(name);
const value = (name) => (flags.includes(name) ? flags[flags.indexOf(name) + 1] : null);
mkdirSync(shots, { recursive: true });

const browser = await chromium.launch({
  executablePath: process.env.WEIR_CHROMIUM || '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--no-first-run'],
});
const out = { requests_elsewhere: [], errors: [] };
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  const origin = new URL(url).origin;
  const answers = { job: [], checkpoints: [] };
  page.on('request', (r) => { if (!r.url().startsWith(origin)) out.requests_elsewhere.push(r.url()); });
  page.on('pageerror', (e) => out.errors.push(String(e)));
  page.on('console', (m) => { if (m.type() === 'error') out.errors.push(m.text()); });
  // Each poll fetches /job and /checkpoints once and renders once, in order: the n-th answer
  // of each is what poll n rendered.
  page.on('response', async (r) => {
    const path = new URL(r.url()).pathname;
    if (path === '/job' || path === '/checkpoints') {
      const list = answers[path.slice(1)];
      const i = list.length;
      list.push(null);
      list[i] = await r.json().catch(() => null);
    }
  });
  const first = await page.goto(url);
  out.status = first.status();
  if (out.status !== 200) {
    out.body = await first.text();
  } else {
    const polled = (n) => page.waitForFunction((n) => Number(document.body.dataset.poll || 0) >= n, n, { timeout: 30000 });
    await polled(3);
    const select = value('--select');
    if (select) await page.click(`#graph .op[data-uid="${select}"]`);
    await page.click('#checkpoints tbody tr');
    const now = await page.evaluate(() => Number(document.body.dataset.poll));
    await polled(now + 1);
    // One synchronous read of the page: no poll renders in between.
    out.page = await page.evaluate(() => {
      const cells = (tr) => [...tr.cells].map((td) => td.textContent);
      const detail = document.getElementById('operator-detail');
      const cpDetail = document.getElementById('checkpoint-detail');
      return {
        poll: Number(document.body.dataset.poll),
        title: document.title,
        ops: [...document.querySelectorAll('#graph .op')].map((g) => ({
          uid: g.dataset.uid, state: g.dataset.state, task: g.closest('.task').dataset.task,
          rate: g.querySelector('.rate').textContent,
        })),
        tasks: [...document.querySelectorAll('#graph .task')].map((g) => ({
          task: g.dataset.task, label: g.querySelector('.task-label').textContent,
        })),
        edges: [...document.querySelectorAll('#graph .edge')].map((g) => ({
          from: g.dataset.from, to: g.dataset.to, partition: g.dataset.partition, label: g.querySelector('text').textContent,
        })),
        chains: [...document.querySelectorAll('#graph .chain')].map((g) => ({ from: g.dataset.from, to: g.dataset.to })),
        detail: detail.hidden ? null : {
          title: document.getElementById('detail-uid').textContent,
          rows: [...detail.querySelectorAll('tbody tr')].map(cells),
        },
        checkpoints: [...document.querySelectorAll('#checkpoints tbody tr')].map(cells),
        checkpoint_detail: cpDetail.hidden ? null : {
          id: document.getElementById('checkpoint-detail-id').textContent,
          rows: [...cpDetail.querySelectorAll('tbody tr')].map(cells),
        },
        charts: [...document.querySelectorAll('#charts .chart')].map((c) => ({
          uid: c.dataset.uid, points: (c.querySelector('polyline.rate')?.getAttribute('points') || '').split(' ').filter(Boolean).length,
        })),
        restore: document.getElementById('restore').textContent,
        exceptions: document.getElementById('exceptions').textContent,
      };
    });
    out.job = answers.job[out.page.poll - 1];
    out.checkpoints = answers.checkpoints[out.page.poll - 1];
    await page.screenshot({ path: `${shots}/dashboard.png`, fullPage: true });
    if (flag('--savepoint')) {
      await page.click('#savepoint');
      const status = await page.waitForSelector('#savepoint-status[data-path]', { timeout: 120000 });
      out.savepoint = await status.getAttribute('data-path');
      await page.screenshot({ path: `${shots}/savepoint.png`, fullPage: false });
    }
  }
} catch (e) {
  out.errors.push(String(e && e.stack || e));
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(out) + '\n');
