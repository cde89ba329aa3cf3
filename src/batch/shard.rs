//! Sharding a batch over several machines: each instance answers the questions whose id
//! hashes to its index, so every question is answered by exactly one shard, and adding a
//! question moves no other (the assignment depends on the question alone, not its position).

use std::fmt;
use std::str::FromStr;

/// This instance's share: `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// 0-based index.
    pub index: u32,
    /// Number of shards.
    pub count: u32,
}

impl Shard {
    /// Whether this shard answers the question with this id (`q-<hex>`).
    pub fn owns(&self, question_id: &str) -> bool {
        let hex = question_id.trim_start_matches("q-");
        let hash = u64::from_str_radix(hex, 16).unwrap_or_else(|_| {
            // Not an id of ours: hash the text itself.
            hex.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
        });
        hash % u64::from(self.count) == u64::from(self.index)
    }

    /// The shard from the environment: `AGENTRY_SHARD=INDEX/COUNT`, or a Kubernetes Indexed
    /// Job's `JOB_COMPLETION_INDEX` (0-based), or a Swarm task slot `AGENTRY_SHARD_SLOT`
    /// (1-based, `{{.Task.Slot}}`), each with `AGENTRY_SHARD_COUNT`.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Option<Self>, String> {
        let var = |name: &str| env(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        if let Some(spec) = var("AGENTRY_SHARD") {
            return spec.parse().map(Some).map_err(|e| format!("AGENTRY_SHARD: {e}"));
        }
        let count = || -> Result<u32, String> {
            let count = var("AGENTRY_SHARD_COUNT")
                .ok_or("AGENTRY_SHARD_COUNT is required with JOB_COMPLETION_INDEX or AGENTRY_SHARD_SLOT")?;
            count.parse::<u32>().map_err(|_| format!("AGENTRY_SHARD_COUNT {count:?} is not a number"))
        };
        let make = |index: u32, count: u32| Shard::new(index, count).map(Some);
        if let Some(index) = var("JOB_COMPLETION_INDEX") {
            let index = index.parse::<u32>().map_err(|_| format!("JOB_COMPLETION_INDEX {index:?} is not a number"))?;
            return make(index, count()?);
        }
        if let Some(slot) = var("AGENTRY_SHARD_SLOT") {
            let slot = slot
                .parse::<u32>()
                .ok()
                .filter(|s| *s >= 1)
                .ok_or(format!("AGENTRY_SHARD_SLOT {slot:?} must be 1 or more"))?;
            return make(slot - 1, count()?);
        }
        Ok(None)
    }

    /// A shard, checked.
    pub fn new(index: u32, count: u32) -> Result<Self, String> {
        if count == 0 || index >= count {
            return Err(format!("shard {index}/{count}: the index must be below the count (0-based)"));
        }
        Ok(Self { index, count })
    }

    /// The report file name of this shard.
    pub fn report_name(&self) -> String {
        format!("report-shard-{}-of-{}.json", self.index, self.count)
    }

    /// The file name of this shard's journal (its rows as they finish).
    pub fn journal_name(&self) -> String {
        format!("report-shard-{}-of-{}.jsonl", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(spec: &str) -> Result<Self, String> {
        let (index, count) = spec.split_once('/').ok_or_else(|| format!("{spec:?} is not INDEX/COUNT (e.g. 0/4)"))?;
        let number = |s: &str| s.trim().parse::<u32>().map_err(|_| format!("{spec:?} is not INDEX/COUNT (e.g. 0/4)"));
        Shard::new(number(index)?, number(count)?)
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::research::question_id;

    #[test]
    fn every_question_has_exactly_one_shard_and_adding_one_moves_none() {
        let questions: Vec<String> = (0..500).map(|n| format!("Question number {n}")).collect();
        let shards: Vec<Shard> = (0..7).map(|i| Shard::new(i, 7).expect("shard")).collect();
        let owner =
            |q: &str| -> Vec<u32> { shards.iter().filter(|s| s.owns(&question_id(q))).map(|s| s.index).collect() };
        let before: Vec<Vec<u32>> = questions.iter().map(|q| owner(q)).collect();
        assert!(before.iter().all(|o| o.len() == 1), "exactly one owner each");
        let mut counts = [0; 7];
        before.iter().for_each(|o| counts[o[0] as usize] += 1);
        assert!(counts.iter().all(|c| *c > 40), "roughly even: {counts:?}");
        // The assignment depends on the question only.
        let after: Vec<Vec<u32>> = questions.iter().map(|q| owner(q)).collect();
        assert_eq!(before, after);
        assert_eq!(owner("A brand new question").len(), 1);
    }

    #[test]
    fn shards_come_from_flags_kubernetes_and_swarm() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned())
        };
        assert_eq!("2/4".parse::<Shard>(), Ok(Shard { index: 2, count: 4 }));
        assert!("4/4".parse::<Shard>().is_err());
        assert!("x".parse::<Shard>().is_err());
        assert_eq!(Shard::from_env(&env(&[])), Ok(None));
        assert_eq!(Shard::from_env(&env(&[("AGENTRY_SHARD", "1/3")])), Ok(Some(Shard { index: 1, count: 3 })));
        assert_eq!(
            Shard::from_env(&env(&[("JOB_COMPLETION_INDEX", "0"), ("AGENTRY_SHARD_COUNT", "5")])),
            Ok(Some(Shard { index: 0, count: 5 }))
        );
        assert_eq!(
            Shard::from_env(&env(&[("AGENTRY_SHARD_SLOT", "5"), ("AGENTRY_SHARD_COUNT", "5")])),
            Ok(Some(Shard { index: 4, count: 5 }))
        );
        assert!(Shard::from_env(&env(&[("JOB_COMPLETION_INDEX", "0")])).is_err(), "a count is required");
    }
}
