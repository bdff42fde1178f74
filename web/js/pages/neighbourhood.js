// Neighbourhood: who produces and who consumes right now (anonymised), how much of the
// street's imports its own exports covered over the last day of slots, and what it traded.
import { get } from '../api.js';
import { t } from '../i18n.js';
import { h, figures, watts, wh, pct } from '../ui.js';
import { subscribe } from '../live.js';

export async function render(main) {
  const now = h('div', { id: 'hood-now' });
  const day = h('div', { id: 'hood-day' });
  main.append(h('h1', {}, t('nav_neighbourhood')), h('div', { class: 'grid' },
    h('section', { class: 'card', 'aria-labelledby': 'hn-h' }, h('h2', { id: 'hn-h' }, t('right_now')), now),
    h('section', { class: 'card', 'aria-labelledby': 'hd-h' }, h('h2', { id: 'hd-h' }, t('last_day')), day)));
  async function refresh() {
    const n = await get('/neighbourhood');
    const max = Math.max(1, ...n.now.power_w.map(Math.abs));
    now.replaceChildren(figures([[t('producing'), String(n.now.producing)], [t('consuming'), String(n.now.consuming)], [t('export_now'), watts(n.now.export_w)], [t('import_now'), watts(n.now.import_w)]]),
      h('div', { class: 'bars', role: 'list', 'aria-label': t('homes_anonymised') }, n.now.power_w.map((p, i) => h('div', { class: 'bar', role: 'listitem' },
        h('span', {}, `${t('home_n', { n: i + 1 })}`),
        h('span', { class: 'sr-only' }, `${p < 0 ? t('exporting') : t('importing')} ${watts(Math.abs(p))}`),
        h('span', { class: `b ${p < 0 ? 'prod' : 'cons'}`, style: null, 'aria-hidden': 'true', 'data-w': Math.abs(p) })))),
      h('p', { class: 'hint' }, t('hood_hint')));
    now.querySelectorAll('.b').forEach((el) => { el.style.width = `${Math.max(2, (100 * Number(el.dataset.w)) / max)}%`; });
    const d = n.day;
    day.replaceChildren(figures([
      [t('self_sufficiency'), d.self_sufficiency_bp == null ? '–' : `${Math.round(d.self_sufficiency_bp / 100)} %`, 'hood-ss'],
      [t('covered_locally'), wh(d.covered_locally_wh)], [t('from_utility'), wh(d.from_utility_wh)],
      [t('traded_locally'), `${wh(d.traded_wh)} (${pct(d.traded_wh, d.import_wh)})`]]), h('p', { class: 'hint' }, t('hood_day_hint', { n: d.to_slot - d.from_slot + 1 })));
  }
  await refresh();
  let pending = null;
  const stop = subscribe((e) => { if (e.type === 'reading' && !pending) pending = setTimeout(() => { pending = null; refresh(); }, 3000); });
  const tick = setInterval(refresh, 15000);
  return () => { stop(); clearInterval(tick); clearTimeout(pending); };
}
