use super::*;
use crate::llm::wire::PromptTokensDetails;

fn usage(prompt: u64, cached: u64, completion: u64) -> Usage {
    Usage {
        prompt_tokens: prompt,
        completion_tokens: completion,
        prompt_tokens_details: Some(PromptTokensDetails { cached_tokens: cached }),
    }
}

fn price(input: f64, cached: f64, output: f64) -> Price {
    Price { input_per_million: input, cached_input_per_million: cached, output_per_million: output }
}

/// Reserves at once, or `None` when the call would have to wait for others to settle.
async fn now(budget: &Budget, chars: usize) -> Option<Result<Reservation, String>> {
    futures::FutureExt::now_or_never(budget.reserve(|| chars))
}

#[test]
fn cached_input_tokens_are_priced_at_the_cached_rate() {
    let spend = Spend::of(&usage(3_000_000, 1_000_000, 1_000_000), &price(1.0, 0.25, 4.0));
    assert_eq!((spend.input_tokens, spend.cached_input_tokens, spend.output_tokens), (3_000_000, 1_000_000, 1_000_000));
    assert!((spend.cost - (2.0 + 0.25 + 4.0)).abs() < 1e-9, "{spend:?}");
    // A server that claims more cached tokens than it read is held to what it read.
    assert_eq!(Spend::of(&usage(10, 50, 0), &price(0.0, 0.0, 0.0)).cached_input_tokens, 10);
}

#[tokio::test]
async fn a_call_waits_for_the_calls_in_flight_and_one_that_cannot_fit_exhausts_the_budget() {
    let budget = Budget::new(BudgetSettings { max_tokens: 1000, max_cost: 0.0 }, Prices::default(), 100);
    // 400 characters: 100 tokens of prompt plus 100 of output, 200 held per call.
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(now(&budget, 400).await.expect("no wait").expect("fits"));
    }
    // A sixth does not fit beside them: it waits, and goes once one of them settles.
    let mut sixth = Box::pin(budget.reserve(|| 400));
    assert!(futures::poll!(sixth.as_mut()).is_pending());
    let mut held = held.into_iter();
    let first = held.next().expect("five");
    assert_eq!(first.settle(Route::Local, Some(&usage(100, 0, 50))).tokens(), 150);
    assert!(futures::poll!(sixth.as_mut()).is_pending(), "150 spent + 4 x 200 held + 200 does not fit");
    drop(held); // four failed calls: released, nothing spent
    let sixth = sixth.await.expect("150 spent + 200: fits");
    assert_eq!(budget.report().spent.tokens(), 150);
    for _ in 0..4 {
        let call = now(&budget, 400).await.expect("no wait").expect("fits");
        call.settle(Route::Local, Some(&usage(100, 0, 50)));
    }
    // 750 spent, 200 held by the sixth: the next waits for it, then cannot fit at all.
    let mut next = Box::pin(budget.reserve(|| 400));
    assert!(futures::poll!(next.as_mut()).is_pending());
    sixth.settle(Route::Local, Some(&usage(100, 0, 50)));
    let why = next.await.expect_err("900 spent + 200 does not fit");
    assert!(why.contains("batch.budget.max_tokens = 1000: 900 spent"), "{why}");
    // Once exhausted, always: even a small call does not go.
    assert!(now(&budget, 4).await.expect("no wait").is_err());
    assert_eq!(budget.exhausted(), Some(why));
    assert_eq!(budget.report().spent.tokens(), 900);
}

#[tokio::test]
async fn spend_is_counted_per_route_and_a_cost_limit_uses_the_dearer_price() {
    let prices = Prices { cloud: price(10.0, 1.0, 20.0), local: Price::default() };
    let budget = Budget::new(BudgetSettings { max_tokens: 0, max_cost: 0.01 }, prices, 100);
    // Estimate: 100 input at 10/M + 100 output at 20/M = 0.003, whatever the route.
    let call = now(&budget, 400).await.expect("no wait").expect("fits");
    call.settle(Route::Local, Some(&usage(100, 0, 100)));
    let call = now(&budget, 400).await.expect("no wait").expect("fits");
    let spend = call.settle(Route::Cloud, Some(&usage(100, 60, 100)));
    assert!((spend.cost - (40.0 * 10.0 + 60.0 + 100.0 * 20.0) / 1e6).abs() < 1e-12);
    let report = budget.report();
    assert_eq!(report.by_route["local"].cost, 0.0);
    assert_eq!(report.by_route["cloud"].cached_input_tokens, 60);
    assert_eq!(report.spent.tokens(), 400);
    // 0.00246 spent: two more estimates fit, a third only if they settled, and then not at all.
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(now(&budget, 400).await.expect("no wait").expect("fits"));
    }
    assert!(now(&budget, 400).await.is_none(), "waits for the calls in flight");
    let call = held.pop().expect("two");
    assert!((call.settle(Route::Cloud, Some(&usage(300, 0, 100))).cost - 0.005).abs() < 1e-12);
    drop(held);
    let why = now(&budget, 400).await.expect("nothing in flight").expect_err("0.00746 + 0.003 > 0.01");
    assert!(why.contains("max_cost"), "{why}");
}

#[test]
fn without_a_limit_nothing_is_estimated_and_spend_is_still_counted() {
    let budget = Budget::unlimited(Prices { cloud: Price::default(), local: price(1.0, 1.0, 1.0) });
    for _ in 0..3 {
        let reserve = budget.reserve(|| unreachable!("no estimate without a limit"));
        let call = futures::FutureExt::now_or_never(reserve).expect("no wait").expect("no limit");
        call.settle(Route::Local, Some(&usage(1_000_000, 0, 0)));
    }
    assert_eq!(budget.report().spent.input_tokens, 3_000_000);
    assert!((budget.report().spent.cost - 3.0).abs() < 1e-9);
}
