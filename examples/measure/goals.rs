//! The checkpoint goals (issue 13) in one table: what each section of `bench` that ran measured,
//! against its target, so that one invocation says which are met.

/// One goal and what this run measured for it.
pub struct Goal {
    pub what: String,
    pub target: String,
    pub measured: String,
    /// `None`: measured, but with nothing to compare (a value missing from the run).
    pub met: Option<bool>,
}

impl Goal {
    /// A goal whose measure must be at most `limit` (in the unit the strings carry).
    pub fn at_most(
        what: impl Into<String>,
        target: impl Into<String>,
        value: Option<f64>,
        limit: f64,
        show: impl Fn(f64) -> String,
    ) -> Goal {
        Goal {
            what: what.into(),
            target: target.into(),
            measured: value.map_or_else(|| "-".to_string(), show),
            met: value.map(|v| v <= limit),
        }
    }
}

/// Prints the goals as a Markdown table (nothing when no section that measures one ran).
pub fn print(goals: &[Goal]) {
    if goals.is_empty() {
        return;
    }
    println!("\nCheckpoint goals (issue 13), from the tables above:\n");
    println!("| goal | target | measured | met |");
    println!("|---|---|---:|---|");
    for g in goals {
        let met = match g.met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        println!("| {} | {} | {} | {met} |", g.what, g.target, g.measured);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_goal_is_met_at_its_limit_and_not_above_or_unmeasured() {
        let pct = |v: f64| format!("{v:.1} %");
        assert_eq!(Goal::at_most("loss", "≤ 5 %", Some(5.0), 5.0, pct).met, Some(true));
        assert_eq!(Goal::at_most("loss", "≤ 5 %", Some(5.1), 5.0, pct).met, Some(false));
        let none = Goal::at_most("loss", "≤ 5 %", None, 5.0, pct);
        assert_eq!((none.met, none.measured.as_str()), (None, "-"));
    }
}
