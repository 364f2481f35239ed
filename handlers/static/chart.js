// The /chart page: candles and volume of one symbol with TradingView's lightweight-charts
// (vendored next to this file), history paged back through /candles as the user scrolls left,
// and the open candle updated live from /stream/candles, read with fetch (EventSource cannot
// send the API key header). State is in the URL: ?symbol=AAPL&interval=1m&timezone=UTC.
(() => {
  'use strict';
  const STEPS = { '1m': 60, '5m': 300, '15m': 900, '1h': 3600, '4h': 14400, '1d': 86400 };
  const UP = '#26a69a';
  const DOWN = '#ef5350';
  const params = new URLSearchParams(location.search);
  // Candles per request; the API allows up to 5000.
  const PAGE = Math.min(Math.max(Number(params.get('limit')) || 500, 10), 5000);
  const el = (id) => document.getElementById(id);

  const state = {
    symbol: (params.get('symbol') || 'AAPL').toUpperCase(),
    interval: STEPS[params.get('interval')] ? params.get('interval') : '1m',
    timezone: params.get('timezone') || 'UTC',
    key: sessionStorage.getItem('mdp-api-key') || '',
    // Ascending; each bar keeps its bucket's UTC start (`utc`) beside the shifted `time`.
    bars: [],
    exhausted: false,
    loading: false,
    requests: 0,
    updates: 0,
    generation: 0,
    abort: null,
  };

  const chart = LightweightCharts.createChart(el('chart'), {
    autoSize: true,
    layout: { background: { color: '#ffffff' }, textColor: '#333' },
    timeScale: { timeVisible: true, secondsVisible: false, rightOffset: 5 },
  });
  const candles = chart.addSeries(LightweightCharts.CandlestickSeries, {
    upColor: UP, downColor: DOWN, borderVisible: false, wickUpColor: UP, wickDownColor: DOWN,
  });
  candles.priceScale().applyOptions({ scaleMargins: { top: 0.08, bottom: 0.28 } });
  const volume = chart.addSeries(LightweightCharts.HistogramSeries, {
    priceFormat: { type: 'volume' }, priceScaleId: '',
  });
  volume.priceScale().applyOptions({ scaleMargins: { top: 0.78, bottom: 0 } });

  // lightweight-charts draws UTC times: a bar is placed at its UTC start shifted by the zone's
  // offset at that moment, so the axis reads local time in the chosen zone.
  const formatters = new Map();
  function offsetSeconds(zone, utc) {
    if (!formatters.has(zone)) {
      formatters.set(zone, new Intl.DateTimeFormat('en-US', {
        timeZone: zone, hourCycle: 'h23', year: 'numeric', month: 'numeric', day: 'numeric',
        hour: 'numeric', minute: 'numeric', second: 'numeric',
      }));
    }
    const parts = Object.fromEntries(
      formatters.get(zone).formatToParts(new Date(utc * 1000)).map((p) => [p.type, p.value]),
    );
    const local = Date.UTC(+parts.year, +parts.month - 1, +parts.day, +parts.hour, +parts.minute, +parts.second);
    return Math.round(local / 1000 - utc);
  }

  function toBar(candle) {
    const utc = Date.parse(candle.timestamp) / 1000;
    return {
      utc,
      time: utc + offsetSeconds(state.timezone, utc),
      open: candle.open, high: candle.high, low: candle.low, close: candle.close,
      volume: candle.volume,
    };
  }
  const volumeOf = (bar) => ({ time: bar.time, value: bar.volume, color: bar.close >= bar.open ? UP : DOWN });

  function show(message) {
    el('status').textContent = message;
  }

  function headers(extra = {}) {
    return state.key ? { ...extra, 'X-API-Key': state.key } : extra;
  }

  class Refused extends Error {}

  async function getJson(path) {
    state.requests += 1;
    const response = await fetch(path, { headers: headers({ Accept: 'application/json' }) });
    if (response.status === 401 || response.status === 403) {
      askForKey(response.status === 401 ? 'This service needs an API key (scopes read and stream).' : 'This key may not read candles.');
      throw new Refused(String(response.status));
    }
    const body = await response.json();
    if (!response.ok) {
      throw new Error(body.detail || `${response.status} ${body.title || ''}`);
    }
    return body;
  }

  function query(extra) {
    const search = new URLSearchParams({ symbol: state.symbol, interval: state.interval, ...extra });
    if (state.timezone !== 'UTC') search.set('timezone', state.timezone);
    return search.toString();
  }

  // Every candle of a window, following next_cursor.
  async function candlesOf(extra) {
    const found = [];
    let page = await getJson(`/candles?${query(extra)}`);
    found.push(...page.candles);
    while (page.next_cursor !== null) {
      page = await getJson(`/candles?${query({ ...extra, cursor: page.next_cursor })}`);
      found.push(...page.candles);
    }
    return found;
  }

  function draw() {
    candles.setData(state.bars);
    volume.setData(state.bars.map(volumeOf));
    el('chart').dataset.bars = String(state.bars.length);
  }

  async function load() {
    const generation = ++state.generation;
    state.abort?.abort();
    state.bars = [];
    state.exhausted = false;
    history.replaceState(null, '', `?${query({})}`);
    document.title = `${state.symbol} ${state.interval} — Market Data Platform`;
    show('Loading…');
    try {
      const found = await candlesOf({ limit: String(PAGE) });
      if (generation !== state.generation) return;
      state.bars = found.map(toBar);
      draw();
      chart.timeScale().scrollToRealTime();
      show(found.length ? '' : 'No candles yet for this symbol.');
      listen(generation);
    } catch (error) {
      if (!(error instanceof Refused)) show(`Could not load candles: ${error.message}`);
    }
  }

  // Older history when the user scrolls near the left edge.
  async function loadOlder() {
    if (state.loading || state.exhausted || !state.bars.length) return;
    state.loading = true;
    const generation = state.generation;
    try {
      const end = new Date(state.bars[0].utc * 1000).toISOString();
      const found = await candlesOf({ end, limit: String(PAGE) });
      if (generation !== state.generation) return;
      const older = found.map(toBar).filter((bar) => bar.utc < state.bars[0].utc);
      if (!older.length) {
        state.exhausted = true;
        show('Start of the history.');
        return;
      }
      state.bars = [...older, ...state.bars];
      draw();
    } catch (error) {
      if (!(error instanceof Refused)) show(`Could not load older candles: ${error.message}`);
    } finally {
      state.loading = false;
    }
  }
  chart.timeScale().subscribeVisibleLogicalRangeChange((range) => {
    if (range && range.from < 10) loadOlder();
  });

  // The stream's candles are aligned to UTC. Where the zone's offset is a whole number of
  // buckets they are the chart's buckets; elsewhere (a 1d chart in New York) the open bucket
  // is read again from /candles, at most every two seconds.
  function alignedWithUtc(utc) {
    return offsetSeconds(state.timezone, utc) % STEPS[state.interval] === 0;
  }

  function apply(bar) {
    const last = state.bars[state.bars.length - 1];
    if (last && bar.utc < last.utc) return;
    if (last && bar.utc === last.utc) state.bars[state.bars.length - 1] = bar;
    else state.bars.push(bar);
    candles.update(bar);
    volume.update(volumeOf(bar));
    state.updates += 1;
    el('chart').dataset.bars = String(state.bars.length);
    el('chart').dataset.updates = String(state.updates);
  }

  let refreshing = null;
  function refreshOpenBucket(generation) {
    if (refreshing) return;
    refreshing = (async () => {
      try {
        const page = await getJson(`/candles?${query({ limit: '2' })}`);
        if (generation === state.generation) page.candles.map(toBar).forEach(apply);
      } catch (error) {
        // The next batch tries again.
      } finally {
        await new Promise((resolve) => setTimeout(resolve, 2000));
        refreshing = null;
      }
    })();
  }

  function onCandle(candle, generation) {
    const utc = Date.parse(candle.timestamp) / 1000;
    if (alignedWithUtc(utc)) apply(toBar(candle));
    else refreshOpenBucket(generation);
  }

  // Server-Sent Events over fetch: blocks separated by a blank line, `field: value` lines.
  async function listen(generation) {
    const abort = new AbortController();
    state.abort = abort;
    let lastId = null;
    while (generation === state.generation) {
      try {
        const extra = { Accept: 'text/event-stream' };
        if (lastId) extra['Last-Event-ID'] = lastId;
        const url = `/stream/candles?symbol=${encodeURIComponent(state.symbol)}&interval=${state.interval}`;
        const response = await fetch(url, { headers: headers(extra), signal: abort.signal });
        if (response.status === 401 || response.status === 403) {
          askForKey('Live updates need a key with the stream scope.');
          return;
        }
        if (response.ok) {
          el('live').textContent = '● live';
          const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
          let buffer = '';
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buffer += value.replace(/\r\n?/g, '\n');
            let cut;
            while ((cut = buffer.indexOf('\n\n')) >= 0) {
              const block = buffer.slice(0, cut);
              buffer = buffer.slice(cut + 2);
              const event = { event: 'message', data: [] };
              for (const line of block.split('\n')) {
                if (!line || line.startsWith(':')) continue;
                const colon = line.indexOf(':');
                const field = colon < 0 ? line : line.slice(0, colon);
                const text = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
                if (field === 'data') event.data.push(text);
                else if (field === 'id') lastId = text;
                else event[field] = text;
              }
              if (event.event === 'candle') onCandle(JSON.parse(event.data.join('\n')), generation);
            }
          }
        }
      } catch (error) {
        if (abort.signal.aborted) return;
      }
      el('live').textContent = '○ reconnecting';
      await new Promise((resolve) => setTimeout(resolve, 1000));
    }
  }

  function askForKey(message) {
    el('key-message').textContent = message;
    el('key-form').hidden = false;
    el('key').focus();
  }

  el('key-form').addEventListener('submit', (event) => {
    event.preventDefault();
    state.key = el('key').value.trim();
    sessionStorage.setItem('mdp-api-key', state.key);
    el('key-form').hidden = true;
    start();
  });

  function fillPickers(symbols) {
    const symbol = el('symbol');
    symbol.replaceChildren(...symbols.map((code) => new Option(code, code)));
    if (!symbols.includes(state.symbol)) symbol.add(new Option(state.symbol, state.symbol));
    symbol.value = state.symbol;
    el('interval').replaceChildren(...Object.keys(STEPS).map((name) => new Option(name, name)));
    el('interval').value = state.interval;
    const local = Intl.DateTimeFormat().resolvedOptions().timeZone;
    const zones = Intl.supportedValuesOf ? Intl.supportedValuesOf('timeZone') : [];
    const names = [...new Set(['UTC', local, state.timezone, ...zones])];
    el('timezone').replaceChildren(...names.map((name) => new Option(name, name)));
    el('timezone').value = state.timezone;
  }

  async function allSymbols() {
    const codes = [];
    let page = await getJson('/symbols?limit=1000');
    codes.push(...page.symbols.map((s) => s.symbol));
    while (page.next_cursor !== null) {
      page = await getJson(`/symbols?limit=1000&cursor=${encodeURIComponent(page.next_cursor)}`);
      codes.push(...page.symbols.map((s) => s.symbol));
    }
    return codes;
  }

  async function start() {
    try {
      fillPickers(await allSymbols());
    } catch (error) {
      if (error instanceof Refused) return;
      fillPickers([]);
    }
    await load();
  }

  for (const name of ['symbol', 'interval', 'timezone']) {
    el(name).addEventListener('change', () => {
      state[name] = el(name).value;
      load();
    });
  }

  // For tests and the curious: the chart, its series and what the page has done so far.
  window.mdpChart = { chart, candles, volume, state, loadOlder };
  start();
})();
