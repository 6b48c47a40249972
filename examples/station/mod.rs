//! The station pipeline shared by `station_hourly` and `http_ingest`: bike-count changes per
//! station from keyed state, summed per station and event-time hour.

use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Datelike, NaiveDateTime, Timelike};
use serde::{Deserialize, Deserializer, Serialize};
use weir::prelude::*;

/// One station reading as it arrives.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reading {
    #[serde(rename = "stationId")]
    pub station_id: String,
    #[serde(rename = "parkingBikeTotCnt")]
    pub bikes: i64,
    #[serde(deserialize_with = "event_time_ms")]
    pub event_time: i64,
}

/// Accepts "YYYY-MM-DD HH:MM:SS" (UTC) or epoch milliseconds.
fn event_time_ms<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Time {
        Millis(i64),
        Text(String),
    }
    match Time::deserialize(d)? {
        Time::Millis(ms) => Ok(ms),
        Time::Text(s) => NaiveDateTime::parse_from_str(&s, "%Y-%m-%d %H:%M:%S")
            .map(|t| t.and_utc().timestamp_millis())
            .map_err(|e| serde::de::Error::custom(format!("event_time '{s}' is not YYYY-MM-DD HH:MM:SS: {e}"))),
    }
}

/// The change a reading makes to its station's bike count.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Change {
    pub station_id: String,
    pub rentals: u64,
    pub returns: u64,
}

/// One output row.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HourRow {
    pub window_start: i64,
    pub window_end: i64,
    #[serde(rename = "stationId")]
    pub station_id: String,
    pub total_rental: u64,
    pub total_return: u64,
}

/// Compares each reading with the station's previous one, kept in keyed state so that it
/// survives failures (a restarted job never takes a station's next reading for its first).
#[derive(Clone)]
struct BikeChanges {
    previous: ValueStateDescriptor<i64>,
}

impl KeyedOperator for BikeChanges {
    type Key = String;
    type In = Reading;
    type Out = Change;

    fn process(
        &mut self,
        station: &String,
        r: Record<Reading>,
        ctx: &mut KeyedContext,
        out: &mut Collector<Change>,
    ) -> Result<()> {
        let mut previous = ctx.state(&self.previous)?;
        let (rentals, returns) = match previous.value()? {
            Some(before) => ((before - r.value.bikes).max(0) as u64, (r.value.bikes - before).max(0) as u64),
            None => (0, 0),
        };
        previous.update(&r.value.bikes)?;
        out.collect_at(Change { station_id: station.clone(), rentals, returns }, r.ts);
        Ok(())
    }
}

/// Sums of rentals and returns.
#[derive(Clone)]
struct SumChanges;

impl AggregateFunction for SumChanges {
    type In = Change;
    type Acc = (u64, u64);
    type Out = (u64, u64);
    fn create_accumulator(&self) -> (u64, u64) {
        (0, 0)
    }
    fn add(&self, acc: &mut (u64, u64), c: &Change) {
        acc.0 += c.rentals;
        acc.1 += c.returns;
    }
    fn get_result(&self, acc: &(u64, u64)) -> (u64, u64) {
        *acc
    }
    fn merge(&self, a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
        (a.0 + b.0, a.1 + b.1)
    }
}

/// `year=YYYY/month=MM/day=DD/hour=HH` of an epoch-ms time, as Spark's partitionBy writes it.
fn hour_partition(ms: i64) -> String {
    match DateTime::from_timestamp_millis(ms) {
        Some(t) => format!("year={}/month={:02}/day={:02}/hour={:02}", t.year(), t.month(), t.day(), t.hour()),
        None => "year=invalid".to_string(),
    }
}

/// Hourly rentals and returns per station; readings too late for their hour go to `late`.
pub fn hourly(readings: &DataStream<Reading>, late: &OutputTag<Change>) -> DataStream<HourRow> {
    readings
        .key_by(|r: &Reading| r.station_id.clone())
        .process("bike-changes", BikeChanges { previous: ValueStateDescriptor::new("previous-count") })
        .uid("bike-changes")
        .key_by(|c: &Change| c.station_id.clone())
        .window(TumblingEventTimeWindows::of(Duration::from_secs(3600)))
        .side_output_late_data(late)
        .aggregate_with(SumChanges, |station: &String, w: &TimeWindow, (total_rental, total_return), out| {
            out.collect(HourRow {
                window_start: w.start,
                window_end: w.end,
                station_id: station.clone(),
                total_rental,
                total_return,
            })
        })
        .uid("station-hours")
}

/// Exactly-once Parquet files under `location` (a directory or `s3://bucket/prefix`),
/// partitioned by the hour of the window start.
pub fn parquet_sink(location: &weir::checkpoint::Location) -> FileSink<HourRow> {
    FileSink::parquet(location)
        .bucket_by(|r: &HourRow| hour_partition(r.window_start))
        .timestamp_millis(&["window_start", "window_end"])
}
