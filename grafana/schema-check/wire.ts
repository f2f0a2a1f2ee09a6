// How a dashboard's JSON is checked against Grafana's TypeScript schema (@grafana/schema).
//
// JSON holds plain strings where the schema has string enums (`"list"` for
// LegendDisplayMode.List), and TypeScript does not let a string literal stand for an enum member.
// Wire<T> is T with every string enum replaced by the union of its values (`${T}`), recursively,
// and nothing else changed: required fields stay required and object literals still get excess
// property checks, so a misspelt or unknown option is an error.
export type Wire<T> = T extends string
  ? `${T}`
  : T extends number | boolean | null | undefined
    ? T
    : T extends ReadonlyArray<infer U>
      ? Array<Wire<U>>
      : T extends object
        ? { [K in keyof T]: Wire<T[K]> }
        : T;

import type { DataQuery } from "@grafana/schema";

// A Prometheus panel query. @grafana/schema publishes no type for it (the Prometheus plugin
// owns it), so this transcribes the fields of the plugin's query schema as
// grafana-foundation-sdk 0.0.21 models them (grafana_foundation_sdk.models.prometheus.Dataquery).
export interface PromQuery extends DataQuery {
  expr: string;
  instant?: boolean;
  range?: boolean;
  exemplar?: boolean;
  editorMode?: "code" | "builder";
  format?: "time_series" | "table" | "heatmap";
  legendFormat?: string;
  intervalFactor?: number;
  interval?: string;
  intervalMs?: number;
  maxDataPoints?: number;
  scopes?: unknown[];
  adhocFilters?: unknown[];
  groupByKeys?: string[];
  timeRange?: { from: string; to: string };
  resultAssertions?: unknown;
}
