-- The time series of the monitoring context (API.md, Monitoring). Samples are not events:
-- they are kept here for CHRONICLE_METRICS_RETENTION, and per-minute rollups longer.

-- One row per series: a metric name and its labels (jsonb compares key order-free).
CREATE TABLE IF NOT EXISTS monitoring_series (
    id     bigserial PRIMARY KEY,
    metric text  NOT NULL,
    labels jsonb NOT NULL,
    UNIQUE (metric, labels)
);

CREATE TABLE IF NOT EXISTS monitoring_samples (
    series_id bigint           NOT NULL,
    at        timestamptz      NOT NULL,
    value     double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS monitoring_samples_series_at ON monitoring_samples (series_id, at);
-- Retention deletes by age.
CREATE INDEX IF NOT EXISTS monitoring_samples_at ON monitoring_samples (at);

-- Per series and minute: enough for avg, min, max, sum and rate once the samples are gone.
CREATE TABLE IF NOT EXISTS monitoring_rollups (
    series_id bigint           NOT NULL,
    minute    timestamptz      NOT NULL,
    count     bigint           NOT NULL,
    sum       double precision NOT NULL,
    min       double precision NOT NULL,
    max       double precision NOT NULL,
    last      double precision NOT NULL,
    last_at   timestamptz      NOT NULL,
    PRIMARY KEY (series_id, minute)
);
CREATE INDEX IF NOT EXISTS monitoring_rollups_minute ON monitoring_rollups (minute);
