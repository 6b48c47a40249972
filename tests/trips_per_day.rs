//! `trips_per_day` on generated FHV trip CSV files with malformed rows: counts equal a reference,
//! and every malformed row is in the dead letters with its file and line.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{read_parts, run_ok, Rng};

#[test]
fn trips_are_counted_per_day_and_malformed_rows_are_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("fhv");
    std::fs::create_dir(&input).unwrap();
    let mut rng = Rng::new(12);
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut bad: BTreeSet<(String, u64)> = BTreeSet::new();
    for f in 0..3 {
        let path = input.join(format!("fhvhv_tripdata_2026-0{}.csv", f + 1));
        let mut text = String::from("hvfhs_license_num,dispatching_base_num,pickup_datetime,dropoff_datetime,PULocationID,DOLocationID,SR_Flag\n");
        for line in 2..=20_000u64 {
            let day = 1 + rng.below(28);
            let row = match rng.below(200) {
                0 => "HV0003,B02764,not-a-date,2026-01-01 00:10:00,1,2,".to_string(),
                1 => "HV0003,B02764,2026-01-05 00:00:00".to_string(),
                2 => "HV0005,B02510,2026-01-07 10:00:00,2026-01-07 10:20:00,x,2,".to_string(),
                _ => {
                    let date = format!("2026-0{}-{day:02}", f + 1);
                    *expected.entry(date.clone()).or_default() += 1;
                    format!(
                        "HV0003,B02764,{date} {:02}:{:02}:00,{date} 23:59:00,{},{},",
                        rng.below(24),
                        rng.below(60),
                        rng.below(265),
                        rng.below(265)
                    )
                }
            };
            if !row.starts_with("HV0003,B02764,2026") || row.split(',').count() != 7 {
                bad.insert((path.display().to_string(), line));
            }
            text.push_str(&row);
            text.push('\n');
        }
        std::fs::write(&path, text).unwrap();
    }
    let (out, dead) = (dir.path().join("out"), dir.path().join("dead"));
    for p in ["1", "2"] {
        let _ = std::fs::remove_dir_all(&out);
        let _ = std::fs::remove_dir_all(&dead);
        run_ok(
            "trips_per_day",
            &[
                "--input",
                input.to_str().unwrap(),
                "--output",
                out.to_str().unwrap(),
                "--dead-letters",
                dead.to_str().unwrap(),
                "-p",
                p,
            ],
        );
        let got: BTreeMap<String, u64> = read_parts(&out, ".csv", Some("pickup_date,trips"))
            .iter()
            .map(|l| {
                let (d, n) = l.split_once(',').unwrap();
                (d.to_string(), n.parse().unwrap())
            })
            .collect();
        assert_eq!(got, expected, "parallelism {p}");
        let letters: BTreeSet<(String, u64)> = read_parts(&dead, ".jsonl", None)
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                assert!(!v["error"].as_str().unwrap().is_empty());
                (v["origin"].as_str().unwrap().to_string(), v["line"].as_u64().unwrap())
            })
            .collect();
        assert!(bad.len() > 100);
        assert_eq!(letters, bad, "every malformed row, with its file and line (parallelism {p})");
    }
}
