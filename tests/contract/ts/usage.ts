// A consumer of the types openapi-typescript generates from openapi/openapi.yaml. The test copies
// this file next to the generated `schema.d.ts` and runs `tsc --noEmit --strict` on it: a renamed
// or removed property, a loosened enum or a lost `null` makes it fail to compile.
import type { components, operations, paths } from './schema';

type Schemas = components['schemas'];
type Json<Op extends keyof operations, Status extends keyof operations[Op]['responses']> =
  operations[Op]['responses'][Status] extends { content: { 'application/json': infer Body } }
    ? Body
    : never;
type Problem = Schemas['Problem'];
type TradesQuery = paths['/trades']['get']['parameters']['query'];
type CandlesQuery = NonNullable<paths['/candles']['get']['parameters']['query']>;

export type LatestPrice = Json<'getLatestPrice', 200>;
export type TradePage = Json<'listTrades', 200>;
export type CandlePage = Json<'listCandles', 200>;

const query: TradesQuery = { symbol: 'AAPL', order: 'asc', limit: 1000, start: '2026-01-02T00:00:00Z' };
const candles: CandlesQuery = { symbol: 'AAPL', interval: '1h', limit: 24 };

// @ts-expect-error `order` is the enum asc | desc, not any string.
const badOrder: TradesQuery = { symbol: 'AAPL', order: 'sideways' };
// @ts-expect-error `symbol` is required on /trades.
const noSymbol: TradesQuery = { limit: 10 };
// @ts-expect-error `interval` is one of 1m 5m 15m 1h 4h 1d.
const badInterval: CandlesQuery = { symbol: 'AAPL', interval: '2m' };

export function toQueryString(params: Record<string, string | number | undefined>): string {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined) {
      search.set(name, String(value));
    }
  }
  return search.toString();
}

export function describeLatest(latest: LatestPrice): string {
  const when: string = latest.timestamp;
  const price: number = latest.price;
  const volume: number = latest.volume;
  return `${latest.symbol} ${price} × ${volume} at ${when}`;
}

export function vwapOf(page: CandlePage): number | null {
  let notional = 0;
  let volume = 0;
  for (const candle of page.candles) {
    const closed: boolean = candle.closed;
    // An empty bucket that `fill` returns has no vwap: the compiler insists on the check.
    if (closed && candle.vwap !== null) {
      notional += candle.vwap * candle.volume;
      volume += candle.volume;
    }
  }
  return volume === 0 ? null : notional / volume;
}

// `next_cursor` is `string | null`: the compiler makes the walk handle the last page.
export async function allTrades(
  fetchPage: (query: TradesQuery) => Promise<TradePage>,
  first: TradesQuery,
): Promise<Schemas['Trade'][]> {
  const trades: Schemas['Trade'][] = [];
  let page = await fetchPage(first);
  trades.push(...page.trades);
  while (page.next_cursor !== null) {
    page = await fetchPage({ ...first, cursor: page.next_cursor });
    trades.push(...page.trades);
  }
  return trades;
}

// Secured operations declare their refusals: a missing or wrong key, a missing scope, a limit.
type Refusal = operations['listTrades']['responses'][401 | 403 | 429];
type RefusalBody = Refusal extends { content: { 'application/problem+json': infer Body } } ? Body : never;

// The key travels in `X-API-Key` (or `Authorization: Bearer`); both headers are declared in the
// contract's security schemes, not as parameters.
export async function fetchLatest(
  baseUrl: string,
  apiKey: string,
  symbol: string,
): Promise<LatestPrice | RefusalBody> {
  const response = await fetch(`${baseUrl}/price/latest?${toQueryString({ symbol })}`, {
    headers: { 'X-API-Key': apiKey },
  });
  return (await response.json()) as LatestPrice | RefusalBody;
}

export function explain(problem: Problem): string {
  switch (problem.code) {
    case 'unauthenticated':
      return 'send a valid API key in X-API-Key';
    case 'forbidden':
    case 'rate_limited':
      return problem.detail;
    case 'validation_failed':
      return (problem.errors ?? []).map((error) => `${error.in} ${error.name}: ${error.message}`).join('; ');
    case 'symbol_not_found':
    case 'no_trades':
      return problem.detail;
    default:
      return `${problem.status} ${problem.title}`;
  }
}

export function healthy(health: Json<'getHealth', 200>): boolean {
  const latency: number | null = health.checks.database.latency_ms;
  return health.status !== 'fail' && latency !== null;
}

export function ingestionLag(status: Json<'getIngestionStatus', 200>): number {
  // @ts-expect-error `seconds_since_last_batch` is nullable: it must be narrowed first.
  const unchecked: number = status.seconds_since_last_batch;
  return status.seconds_since_last_batch ?? Number.POSITIVE_INFINITY;
}

export const examples = { query, candles, badOrder, noSymbol, badInterval, describeLatest };
