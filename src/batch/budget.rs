//! The batch's budget (`[batch.budget]`): what its model calls spent, per route, and whether
//! the next call may go.
//!
//! - **Counted once per response.** The agent holds a [`Reservation`] while a model call is in
//!   flight and settles it with the response's `usage` ([`Reservation::settle`]); that is the
//!   only place spend is added, and the agent adds the same [`Spend`] to the question's row in
//!   the same breath, so the report's spend is the sum of its rows. Cached input tokens
//!   (`prompt_tokens_details.cached_tokens`) are priced at the cached rate.
//! - **Shared by the questions in flight**: one ledger behind a mutex, held for a few
//!   arithmetic operations, never across an await.
//! - **"Could exceed"**: before a model call the agent reserves a cautious estimate of it: the
//!   request's prompt characters / 4 (or more, when responses showed more tokens per character)
//!   plus `model.max_tokens`, priced as uncached input and full output at the dearer route's
//!   price (the router picks the route after the check). The call may go when what was
//!   spent, what the calls in flight hold, and this estimate all fit the limits. When they do
//!   not while other calls are in flight, it waits for them to settle (they usually spend far
//!   less than they hold) and checks again. When it does not fit with nothing in flight, the
//!   budget is *exhausted* for the rest of the batch: no question starts any more, and each
//!   question in flight stops before its next model call (its current turn, the call and the
//!   tools it asked for, finishes). So, as long as the estimate holds (it does for the output:
//!   `max_tokens` caps it), the batch never spends more than the budget.
//! - With no limit set nothing is estimated; spend is still counted for the report.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::actors::model_router::Route;
use crate::config::{BudgetSettings, Price};
use crate::llm::wire::Usage;

/// Tokens and what they cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Spend {
    /// Input tokens, cached ones included.
    pub input_tokens: u64,
    /// Of the input tokens, those read from the provider's prompt cache.
    pub cached_input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Their cost at the route's prices.
    pub cost: f64,
}

impl Spend {
    /// One response's usage at `price`: uncached input, cached input and output each at their
    /// rate.
    pub fn of(usage: &Usage, price: &Price) -> Self {
        let cached = usage.cached_tokens();
        Self::priced(usage.prompt_tokens, cached, usage.completion_tokens, price)
    }

    fn priced(input: u64, cached: u64, output: u64, price: &Price) -> Self {
        let per_million = |tokens: u64, rate: f64| tokens as f64 * rate / 1_000_000.0;
        let cost = per_million(input - cached, price.input_per_million)
            + per_million(cached, price.cached_input_per_million)
            + per_million(output, price.output_per_million);
        Self { input_tokens: input, cached_input_tokens: cached, output_tokens: output, cost }
    }

    /// Input plus output tokens (what `max_tokens` counts).
    pub fn tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }

    /// Adds `other` to this.
    pub fn add(&mut self, other: &Spend) {
        self.input_tokens += other.input_tokens;
        self.cached_input_tokens += other.cached_input_tokens;
        self.output_tokens += other.output_tokens;
        self.cost += other.cost;
    }
}

/// Both routes' prices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Prices {
    /// `[model.cloud.price]`.
    pub cloud: Price,
    /// `[model.local.price]`.
    pub local: Price,
}

impl Prices {
    fn of(&self, route: Route) -> &Price {
        match route {
            Route::Cloud => &self.cloud,
            Route::Local => &self.local,
        }
    }

    /// Each rate at the dearer route's: the price of a call whose route is not known yet.
    fn dearer(&self) -> Price {
        let (cloud, local) = (&self.cloud, &self.local);
        Price {
            input_per_million: cloud.input_per_million.max(local.input_per_million),
            cached_input_per_million: cloud.cached_input_per_million.max(local.cached_input_per_million),
            output_per_million: cloud.output_per_million.max(local.output_per_million),
        }
    }
}

/// The budget's part of the report: the limits, the prices, what was spent (in all and per
/// route) and, when the budget ran out, why.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BudgetReport {
    /// `batch.budget.max_tokens` (0: no limit).
    pub max_tokens: u64,
    /// `batch.budget.max_cost` (0: no limit).
    pub max_cost: f64,
    /// The prices spend was counted at.
    pub prices: Prices,
    /// What the batch's model calls spent.
    pub spent: Spend,
    /// The same, per route (`cloud`, `local`).
    pub by_route: BTreeMap<String, Spend>,
    /// Why the batch stopped starting questions, when the budget ran out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exhausted: Option<String>,
}

impl BudgetReport {
    /// Whether a limit was set.
    pub fn is_limited(&self) -> bool {
        self.max_tokens > 0 || self.max_cost > 0.0
    }

    /// Adds a shard's report: limits (each shard had its share), spend, the first reason.
    pub fn merge(&mut self, other: &BudgetReport) {
        self.max_tokens += other.max_tokens;
        self.max_cost += other.max_cost;
        if self.prices == Prices::default() {
            self.prices = other.prices;
        }
        self.spent.add(&other.spent);
        for (route, spend) in &other.by_route {
            self.by_route.entry(route.clone()).or_default().add(spend);
        }
        if self.exhausted.is_none() {
            self.exhausted.clone_from(&other.exhausted);
        }
    }
}

/// The batch's budget, shared by its questions; cheap to clone.
#[derive(Debug, Clone)]
pub struct Budget(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    limits: BudgetSettings,
    prices: Prices,
    /// `model.max_tokens`: the most a call can answer with.
    max_output: u64,
    ledger: Mutex<Ledger>,
    /// Bumped whenever a held call settles or is released: a call waiting for room looks again.
    settled: tokio::sync::watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct Ledger {
    spent: Spend,
    by_route: BTreeMap<String, Spend>,
    /// What the calls in flight may still spend (their estimates).
    held_tokens: u64,
    held_cost: f64,
    held_calls: u64,
    /// The most prompt tokens per prompt character a response has shown.
    tokens_per_char: f64,
    exhausted: Option<String>,
}

/// Prompt tokens per character assumed until a response shows more (OpenAI's own estimate).
const TOKENS_PER_CHAR: f64 = 0.25;

impl Default for Budget {
    fn default() -> Self {
        Self::unlimited(Prices::default())
    }
}

impl Budget {
    /// A budget with `limits`, counting spend at `prices`; `max_output` is `model.max_tokens`.
    pub fn new(limits: BudgetSettings, prices: Prices, max_output: u32) -> Self {
        let ledger = Mutex::new(Ledger { tokens_per_char: TOKENS_PER_CHAR, ..Ledger::default() });
        let settled = tokio::sync::watch::Sender::new(0);
        Self(Arc::new(Inner { limits, prices, max_output: u64::from(max_output), ledger, settled }))
    }

    /// No limit: spend is only counted.
    pub fn unlimited(prices: Prices) -> Self {
        Self::new(BudgetSettings::default(), prices, 0)
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.0.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Why no question may start and no further model call may go, once the budget ran out.
    pub fn exhausted(&self) -> Option<String> {
        self.ledger().exhausted.clone()
    }

    /// Before a model call: holds its estimate (`prompt_chars` is asked for only when a limit
    /// is set), waiting while it fits only once calls in flight settle; or says why it could
    /// exceed the budget, which from then on is exhausted.
    pub async fn reserve(&self, prompt_chars: impl FnOnce() -> usize) -> Result<Reservation, String> {
        if !self.0.limits.is_limited() {
            return Ok(Reservation { budget: self.clone(), tokens: 0, cost: 0.0, chars: 0, held: false });
        }
        let chars = prompt_chars();
        let mut settled = self.0.settled.subscribe();
        loop {
            settled.borrow_and_update();
            match self.try_reserve(chars) {
                Ok(Some(reservation)) => return Ok(reservation),
                Err(why) => return Err(why),
                // The sender lives as long as `self`: this never ends with an error.
                Ok(None) => {
                    let _ = settled.changed().await;
                }
            }
        }
    }

    /// Holds the estimate of a call of `chars` prompt characters; `None` when it fits only
    /// once calls in flight settle.
    fn try_reserve(&self, chars: usize) -> Result<Option<Reservation>, String> {
        let limits = self.0.limits;
        let mut ledger = self.ledger();
        if let Some(why) = &ledger.exhausted {
            return Err(why.clone());
        }
        let input = (chars as f64 * ledger.tokens_per_char).ceil() as u64;
        let estimate = Spend::priced(input, 0, self.0.max_output, &self.0.prices.dearer());
        let (tokens, cost) = (estimate.tokens(), estimate.cost);
        let over_tokens =
            limits.max_tokens > 0 && ledger.spent.tokens() + ledger.held_tokens + tokens > limits.max_tokens;
        let over_cost = limits.max_cost > 0.0 && ledger.spent.cost + ledger.held_cost + cost > limits.max_cost;
        if (over_tokens || over_cost) && ledger.held_calls > 0 {
            return Ok(None);
        }
        if over_tokens || over_cost {
            let why = if over_tokens {
                format!(
                    "budget: the next model call could exceed batch.budget.max_tokens = {}: {} spent, this call \
                     estimated at {tokens} (prompt {chars} characters, {input} tokens, plus model.max_tokens {})",
                    limits.max_tokens,
                    ledger.spent.tokens(),
                    self.0.max_output
                )
            } else {
                format!(
                    "budget: the next model call could exceed batch.budget.max_cost = {}: {:.6} spent, this call \
                     estimated at {cost:.6} ({input} prompt tokens at the dearer input price, plus \
                     model.max_tokens {} at the dearer output price)",
                    limits.max_cost, ledger.spent.cost, self.0.max_output
                )
            };
            tracing::warn!(reason = %why, "budget exhausted: no new questions; those in flight stop after this turn");
            ledger.exhausted = Some(why.clone());
            drop(ledger);
            // Whoever waits for room learns there is none.
            self.0.settled.send_modify(|n| *n += 1);
            return Err(why);
        }
        ledger.held_tokens += tokens;
        ledger.held_cost += cost;
        ledger.held_calls += 1;
        Ok(Some(Reservation { budget: self.clone(), tokens, cost, chars, held: true }))
    }

    fn release(&self, ledger: &mut Ledger, tokens: u64, cost: f64) {
        ledger.held_calls -= 1;
        ledger.held_tokens -= tokens;
        // Sums of floats drift: with nothing held, nothing is.
        ledger.held_cost = if ledger.held_calls == 0 { 0.0 } else { (ledger.held_cost - cost).max(0.0) };
        self.0.settled.send_modify(|n| *n += 1);
    }

    /// The budget's part of the report as things stand.
    pub fn report(&self) -> BudgetReport {
        let ledger = self.ledger();
        BudgetReport {
            max_tokens: self.0.limits.max_tokens,
            max_cost: self.0.limits.max_cost,
            prices: self.0.prices,
            spent: ledger.spent,
            by_route: ledger.by_route.clone(),
            exhausted: ledger.exhausted.clone(),
        }
    }
}

/// A model call's place in the budget while it is in flight: released when dropped (the call
/// failed or its question was given up on), replaced by what the response cost when settled.
#[derive(Debug)]
#[must_use = "a reservation is settled with the response's usage"]
pub struct Reservation {
    budget: Budget,
    tokens: u64,
    cost: f64,
    /// The request's prompt characters (0 when not counted).
    chars: usize,
    held: bool,
}

impl Reservation {
    /// The call answered by `route` with `usage`: counts it (once) and returns its spend.
    pub fn settle(mut self, route: Route, usage: Option<&Usage>) -> Spend {
        let budget = self.budget.clone();
        let spend = usage.map(|usage| Spend::of(usage, budget.0.prices.of(route))).unwrap_or_default();
        let mut ledger = budget.ledger();
        if self.held {
            budget.release(&mut ledger, self.tokens, self.cost);
            self.held = false;
        }
        ledger.spent.add(&spend);
        ledger.by_route.entry(route.to_string()).or_default().add(&spend);
        if let (Some(usage), true) = (usage, self.chars > 0) {
            let seen = usage.prompt_tokens as f64 / self.chars as f64;
            ledger.tokens_per_char = ledger.tokens_per_char.max(seen);
        }
        spend
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.held {
            let budget = self.budget.clone();
            let mut ledger = budget.ledger();
            budget.release(&mut ledger, self.tokens, self.cost);
        }
    }
}

#[cfg(test)]
mod tests;
