// usage.ts's functions against a live server: the test compiles this next to the generated
// `schema.d.ts` and runs `run(base, key)` in Node, so the types are checked against real answers.
import type { paths } from './schema';
import { allTrades, explain, fetchLatest, toQueryString, vwapOf } from './usage';
import type { CandlePage, LatestPrice, TradePage } from './usage';

type CandlesQuery = NonNullable<paths['/candles']['get']['parameters']['query']>;
type TradesQuery = paths['/trades']['get']['parameters']['query'];
type Problem = Parameters<typeof explain>[0];

async function getJson<Body>(url: string, key: string): Promise<Body> {
  const response = await fetch(url, { headers: { 'X-API-Key': key } });
  return (await response.json()) as Body;
}

export async function run(base: string, key: string) {
  const candlesQuery: CandlesQuery = { symbol: 'AAPL', interval: '1m', limit: 5 };
  const candles = await getJson<CandlePage>(`${base}/candles?${toQueryString(candlesQuery)}`, key);

  const end = new Date().toISOString();
  const start = new Date(Date.now() - 10 * 60 * 1000).toISOString();
  const first: TradesQuery = { symbol: 'AAPL', order: 'asc', limit: 50, start, end };
  let pages = 0;
  const trades = await allTrades(async (query) => {
    pages += 1;
    return getJson<TradePage>(`${base}/trades?${toQueryString(query)}`, key);
  }, first);

  const latest = (await fetchLatest(base, key, 'msft')) as LatestPrice;
  const problem = await getJson<Problem>(`${base}/price/latest?symbol=NOPE`, key);
  const refused = await getJson<Problem>(`${base}/price/latest?symbol=AAPL`, 'not-a-key');

  return {
    candles: candles.candles.length,
    interval: candles.interval,
    vwap: vwapOf(candles),
    trades: trades.length,
    pages,
    latest: latest.symbol,
    problem: [problem.code, explain(problem)],
    refused: [refused.code, explain(refused)],
  };
}
