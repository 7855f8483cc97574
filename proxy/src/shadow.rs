//! The pool's shadows: `GET /v2/admin/shadows` and `GET /v2/admin/models/{id}/shadow` ask
//! every scorer in rotation for the shadows it counts (`GET /v2/mm/shadows`,
//! `contract::shadow::ShadowsReport`) and sum each model's counts
//! (`ShadowCounts::merge`), and the judge ([`Judge`]) does the same every
//! `shadow.judge_interval` to act on the rules.
//!
//! The merge ([`merge`]) is pure: for each model, only views of the newest shadow (the
//! largest `spec.since_ms`, then version) are summed, since a scorer that has not yet
//! re-read the store still reports the shadow set before; the verdict is judged again on
//! the sum, never taken from one scorer. A scorer that does not answer within [`TIMEOUT`]
//! (or answers something unreadable), or is out of rotation, is named in `missing`.
//!
//! The judge's rule on an incomplete merge: it acts when the scorers that answered alone
//! meet the rule. Every figure of the rule is a sum, so their counts are already at least
//! `min_requests` comparisons of this candidate on this model's traffic with the agreement
//! and errors the rule asks; a missing scorer's counts could lower the agreement, but they
//! live in its memory (a dead scorer's are gone) and waiting for a complete merge would hold
//! a promotion for as long as any scorer is down. The log line says the merge was
//! incomplete and names the missing scorers.
//!
//! A failure is final for a shadow (model, `since_ms`) in the judge that saw it: once the
//! judge saw the pool's sums fail the rule, it never promotes that shadow, even if the
//! agreement recovers later or the scorer holding the disagreements misses a round
//! ([`Judged::step`]). It forgets a shadow only once a complete round (every scorer
//! answered) no longer reports it, or a newer shadow of the model is reported.
//!
//! Several proxies may judge at once: a promotion carries the shadow's `since_ms`
//! (`POST .../shadow/promote?since_ms=S`), which the scorer checks against the store, so
//! only one promotion of a shadow succeeds and the others get 409 (or 404 once it is gone),
//! which the judge takes as done.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use manymodels_config::proxy::scope_allows;
use manymodels_contract::route as scorer_route;
use manymodels_contract::shadow::{
    PoolShadows, RuleAction, ShadowView, ShadowsReport, Verdict, verdict,
};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::metrics::Metrics;
use crate::pool::Pool;
use crate::reject::Reply;

/// How long each scorer may take to answer.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Sums every scorer's views into the pool's: one view per model, sorted by model, only
/// the models `scope` admits (empty: every model) and, with `only`, that model alone.
pub fn merge(reports: &[ShadowsReport], scope: &[String], only: Option<&str>) -> Vec<ShadowView> {
    let mut by_model: BTreeMap<&str, Vec<&ShadowView>> = BTreeMap::new();
    for view in reports.iter().flat_map(|r| &r.shadows) {
        if only.is_some_and(|m| m != view.model) || !scope_allows(scope, &view.model) {
            continue;
        }
        by_model.entry(&view.model).or_default().push(view);
    }
    by_model
        .into_values()
        .filter_map(|views| {
            let newest = views
                .iter()
                .max_by_key(|v| (v.spec.since_ms, v.spec.version))?;
            let key = (newest.spec.since_ms, newest.spec.version);
            let mut merged = ShadowView {
                model: newest.model.clone(),
                live: None,
                spec: newest.spec.clone(),
                counts: Default::default(),
                verdict: Verdict::NoRule,
                resident: false,
            };
            for view in views
                .iter()
                .filter(|v| (v.spec.since_ms, v.spec.version) == key)
            {
                merged.counts.merge(&view.counts);
                merged.live = merged.live.or(view.live);
                merged.resident |= view.resident;
            }
            merged.verdict = verdict(merged.spec.rule.as_ref(), &merged.counts);
            Some(merged)
        })
        .collect()
}

/// Asks every scorer in rotation for its shadows (narrowed to `prefixes` when given, which
/// each scorer applies, as `x-mm-model-prefixes`). Answers the reports read and the names
/// of the scorers missing from them.
pub async fn ask(pool: &Pool, prefixes: Option<&str>) -> (Vec<ShadowsReport>, Vec<String>) {
    let (asked, mut missing) = pool
        .get_from_all(scorer_route::SHADOWS, prefixes, TIMEOUT)
        .await;
    let mut reports = Vec::new();
    for (name, body) in asked {
        let read = body.and_then(|body| {
            serde_json::from_slice::<ShadowsReport>(&body)
                .map_err(|e| format!("unreadable shadows: {e}"))
        });
        match read {
            Ok(report) => reports.push(report),
            Err(error) => {
                tracing::debug!(scorer = %name, error, "a scorer's shadows are missing");
                missing.push(name);
            }
        }
    }
    (reports, missing)
}

/// `GET /v2/admin/shadows` (`only`: `None`) and `GET /v2/admin/models/{id}/shadow`: the
/// pool's views for the caller's key (`scope`: its prefixes, empty for every model). A
/// model without a shadow answers an empty list.
/// A shadow this proxy's judge saw fail reads `failed` whatever its sums say now (a
/// failure is final: [`Judged::step`]).
pub async fn serve(
    pool: &Pool,
    only: Option<&str>,
    scope: &[String],
    judged: &Mutex<Judged>,
) -> Reply {
    // One model: the scorers narrow to its id (a prefix), the merge to the id itself.
    let prefixes = match only {
        Some(model) => model.to_string(),
        None => scope.join("|"),
    };
    let (reports, missing) = ask(pool, Some(&prefixes)).await;
    let mut shadows = merge(&reports, scope, only);
    {
        let judged = judged.lock().unwrap_or_else(|p| p.into_inner());
        for view in &mut shadows {
            if judged.step(view) == Step::Failed {
                view.verdict = Verdict::Failed;
            }
        }
    }
    Reply::json(200, &PoolShadows { shadows, missing })
}

/// What the judge does about one merged view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// No rule, or still collecting.
    Wait,
    /// The rule is met and says promote.
    Promote,
    /// The rule is met and says report.
    Report,
    /// The rule failed.
    Failed,
}

impl Step {
    pub fn of(view: &ShadowView) -> Step {
        match (view.verdict, view.spec.rule.map(|r| r.action)) {
            (Verdict::Met, Some(RuleAction::Promote)) => Step::Promote,
            (Verdict::Met, Some(RuleAction::Report)) => Step::Report,
            (Verdict::Failed, Some(_)) => Step::Failed,
            _ => Step::Wait,
        }
    }

    /// The labels of `mm_proxy_shadow_verdicts_total` (`None` while waiting).
    fn labels(self, action: RuleAction) -> Option<[&'static str; 2]> {
        let action = match action {
            RuleAction::Promote => "promote",
            RuleAction::Report => "report",
        };
        match self {
            Step::Wait => None,
            Step::Promote | Step::Report => Some(["met", action]),
            Step::Failed => Some(["failed", action]),
        }
    }
}

/// What the judge remembers per shadow (model, `since_ms`): the verdicts it already
/// logged and counted (a failure is final: [`Judged::step`]), and whether its promotion
/// is done. Only shadows still reported are kept (while a scorer is missing, also those
/// no answering scorer reports), so it holds about one entry per shadow in the pool.
#[derive(Debug, Default)]
pub struct Judged {
    seen: HashMap<(String, u64), Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    met: bool,
    failed: bool,
    promoted: bool,
}

impl Judged {
    /// Forgets the shadows not in `views` (dropped, promoted or replaced). After an
    /// incomplete round (`complete`: every scorer answered) it forgets only the shadows
    /// of a model now reported with a newer one: a shadow no answering scorer reports may
    /// be counted by a missing one, and its failure must stay final.
    pub fn retain(&mut self, views: &[ShadowView], complete: bool) {
        self.seen.retain(
            |(model, since), _| match views.iter().find(|v| v.model == *model) {
                Some(v) if complete => v.spec.since_ms == *since,
                Some(v) => v.spec.since_ms <= *since,
                None => !complete,
            },
        );
    }

    /// What to do about `view`: its step, except that a shadow this judge saw fail stays
    /// failed (never promoted, whatever its counts say later).
    pub fn step(&self, view: &ShadowView) -> Step {
        let failed = self
            .seen
            .get(&(view.model.clone(), view.spec.since_ms))
            .is_some_and(|s| s.failed);
        if failed && view.spec.rule.is_some() {
            Step::Failed
        } else {
            Step::of(view)
        }
    }

    /// Whether `step` is news for this shadow (to be logged and counted once), noting it.
    pub fn first(&mut self, view: &ShadowView, step: Step) -> bool {
        let seen = self
            .seen
            .entry((view.model.clone(), view.spec.since_ms))
            .or_default();
        let flag = match step {
            Step::Wait => return false,
            Step::Promote | Step::Report => &mut seen.met,
            Step::Failed => &mut seen.failed,
        };
        !std::mem::replace(flag, true)
    }

    /// Whether this shadow's promotion still has to be asked for.
    pub fn to_promote(&self, view: &ShadowView) -> bool {
        !self
            .seen
            .get(&(view.model.clone(), view.spec.since_ms))
            .is_some_and(|s| s.promoted)
    }

    fn promoted(&mut self, view: &ShadowView) {
        self.seen
            .entry((view.model.clone(), view.spec.since_ms))
            .or_default()
            .promoted = true;
    }
}

/// The background service that judges every shadow's rule every `shadow.judge_interval`.
pub struct Judge {
    pub pool: Arc<Pool>,
    pub metrics: Arc<Metrics>,
    pub interval: Duration,
    /// Each promotion call, and each refresh after one, waits at most this.
    pub timeout: Duration,
    /// Shared with the proxy's views (`serve`), so they say what the judge decided.
    pub judged: Arc<Mutex<Judged>>,
}

#[async_trait]
impl BackgroundService for Judge {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = ticker.tick() => {}
            }
            self.round().await;
        }
    }
}

impl Judge {
    /// One round: ask, merge, act on every rule.
    pub async fn round(&self) {
        let (reports, missing) = ask(&self.pool, None).await;
        if reports.is_empty() {
            return;
        }
        let views = merge(&reports, &[], None);
        let complete = missing.is_empty();
        let mut promote = Vec::new();
        {
            let mut judged = self.judged.lock().unwrap_or_else(|p| p.into_inner());
            judged.retain(&views, complete);
            for view in &views {
                let Some(rule) = view.spec.rule else { continue };
                // A failure is final for this shadow.
                let step = judged.step(view);
                if judged.first(view, step) {
                    if let Some(labels) = step.labels(rule.action) {
                        self.metrics
                            .shadow_verdicts
                            .with_label_values(&labels)
                            .inc();
                    }
                    log(view, step, &missing);
                }
                if step == Step::Promote && judged.to_promote(view) {
                    promote.push(view.clone());
                }
            }
        }
        for view in promote {
            if self.promote(&view, complete).await {
                self.judged
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .promoted(&view);
            }
        }
    }

    /// Asks the model's owner to promote the shadow set at its `since_ms`; `true` when it
    /// is done (by this call, or already by another judge or an operator).
    async fn promote(&self, view: &ShadowView, complete: bool) -> bool {
        let model = &view.model;
        let Some(owner) = self.pool.candidates(model, 1, &[]).into_iter().next() else {
            tracing::warn!(
                model,
                "shadow rule met but no scorer to promote it on; next round"
            );
            self.count_promotion("failed");
            return false;
        };
        let path = format!(
            "{}?since_ms={}",
            scorer_route::ADMIN_SHADOW_PROMOTE.path(model),
            view.spec.since_ms
        );
        let authorization = self.pool.authorization_for(&owner.name);
        let answer = tokio::time::timeout(
            self.timeout,
            crate::http1::post(&owner.addr.to_string(), &path, authorization.as_deref()),
        )
        .await;
        match answer {
            Ok(Ok((200, _))) => {
                self.count_promotion("promoted");
                tracing::info!(
                    model,
                    version = view.spec.version,
                    since_ms = view.spec.since_ms,
                    compared = view.counts.compared,
                    agreement = view.counts.agreement().unwrap_or(0.0),
                    complete,
                    scorer = &*owner.name,
                    "shadow promoted: its rule is met; the candidate is now live"
                );
                crate::admin::refresh_everywhere(
                    &self.pool,
                    model,
                    Some(&owner.name),
                    None,
                    self.timeout,
                );
                true
            }
            Ok(Ok((409 | 404, _))) => {
                self.count_promotion("already_done");
                tracing::debug!(
                    model,
                    since_ms = view.spec.since_ms,
                    "shadow already promoted or replaced (another judge or an operator)"
                );
                true
            }
            other => {
                self.count_promotion("failed");
                let error = match other {
                    Err(_) => format!("no answer within {:?}", self.timeout),
                    Ok(Err(e)) => format!("unreachable: {e}"),
                    Ok(Ok((status, body))) => {
                        format!(
                            "answered {status}: {}",
                            manymodels_contract::truncate_for_message(&String::from_utf8_lossy(
                                &body
                            ))
                        )
                    }
                };
                tracing::warn!(
                    model,
                    scorer = &*owner.name,
                    error,
                    "shadow promotion failed; next round"
                );
                false
            }
        }
    }

    fn count_promotion(&self, result: &str) {
        self.metrics
            .shadow_promotions
            .with_label_values(&[result])
            .inc();
    }
}

/// Logs a verdict the first time this proxy sees it for a shadow.
fn log(view: &ShadowView, step: Step, missing: &[String]) {
    let counts = &view.counts;
    let (model, version, since_ms) = (&view.model, view.spec.version, view.spec.since_ms);
    let agreement = counts.agreement().unwrap_or(0.0);
    let missing = missing.join(",");
    match step {
        Step::Wait => {}
        Step::Promote => tracing::info!(
            model,
            version,
            since_ms,
            compared = counts.compared,
            agreement,
            errors = counts.errors,
            missing,
            "shadow rule met: promoting the candidate"
        ),
        Step::Report => tracing::info!(
            model,
            version,
            since_ms,
            compared = counts.compared,
            agreement,
            errors = counts.errors,
            missing,
            "shadow rule met (action report: nothing changed)"
        ),
        Step::Failed => tracing::warn!(
            model,
            version,
            since_ms,
            compared = counts.compared,
            agreement,
            errors = counts.errors,
            label_flips = counts.label_flips,
            max_abs_diff = counts.max_abs_diff,
            missing,
            "shadow rule failed: the candidate is not promoted"
        ),
    }
}

#[cfg(test)]
mod tests {
    use manymodels_contract::shadow::{ShadowCounts, ShadowRule, ShadowSpec};

    use super::*;

    fn rule(action: RuleAction) -> ShadowRule {
        ShadowRule {
            min_requests: 40,
            min_agreement: 0.99,
            max_errors: 0,
            action,
        }
    }

    fn view(model: &str, version: u64, since_ms: u64, compared: u64, agreed: u64) -> ShadowView {
        let counts = ShadowCounts {
            compared,
            agreed,
            elements: compared,
            sum_abs_diff: 0.1 * (compared - agreed) as f64,
            max_abs_diff: if compared > agreed { 0.5 } else { 0.0 },
            ..ShadowCounts::default()
        };
        let spec = ShadowSpec {
            version,
            percent: 50.0,
            tolerance: 1e-6,
            rule: Some(rule(RuleAction::Promote)),
            since_ms,
        };
        ShadowView {
            model: model.into(),
            live: Some(1),
            verdict: verdict(spec.rule.as_ref(), &counts),
            spec,
            counts,
            resident: false,
        }
    }

    fn report(scorer: &str, shadows: Vec<ShadowView>) -> ShadowsReport {
        ShadowsReport {
            scorer: scorer.into(),
            shadows,
        }
    }

    #[test]
    fn the_pool_sums_each_scorers_counts_and_judges_the_sum() {
        // Neither scorer alone has 40 comparisons; together they meet the rule.
        let reports = [
            report("a", vec![view("m", 2, 10, 25, 25), view("n", 3, 5, 1, 0)]),
            report("b", vec![view("m", 2, 10, 20, 20)]),
        ];
        assert_eq!(reports[0].shadows[0].verdict, Verdict::Collecting);
        let merged = merge(&reports, &[], None);
        assert_eq!(merged.len(), 2);
        let m = &merged[0];
        assert_eq!((m.model.as_str(), m.counts.compared), ("m", 45));
        assert_eq!(m.verdict, Verdict::Met);
        assert_eq!(Step::of(m), Step::Promote);
        assert_eq!(merged[1].counts.max_abs_diff, 0.5);
        // One model alone.
        let only = merge(&reports, &[], Some("n"));
        assert_eq!(only.len(), 1);
        assert_eq!(only[0].model, "n");
    }

    #[test]
    fn only_the_newest_shadow_of_a_model_is_summed() {
        // Scorer `b` still counts the shadow set before (since 10); the new one (since 20,
        // version 3) starts from zero and is the one shown.
        let reports = [
            report("a", vec![view("m", 3, 20, 2, 2)]),
            report("b", vec![view("m", 2, 10, 100, 100)]),
            report("c", vec![view("m", 3, 20, 1, 0)]),
        ];
        let merged = merge(&reports, &[], None);
        assert_eq!(merged.len(), 1);
        assert_eq!((merged[0].spec.version, merged[0].spec.since_ms), (3, 20));
        assert_eq!((merged[0].counts.compared, merged[0].counts.agreed), (3, 2));
        assert_eq!(merged[0].verdict, Verdict::Collecting);
    }

    #[test]
    fn a_scoped_key_sees_only_its_prefixes_shadows() {
        let reports = [report(
            "a",
            vec![view("acme-1", 2, 1, 1, 1), view("globex-1", 2, 1, 1, 1)],
        )];
        let merged = merge(&reports, &["acme-".to_string()], None);
        let models: Vec<&str> = merged.iter().map(|v| v.model.as_str()).collect();
        assert_eq!(models, ["acme-1"]);
        assert!(merge(&reports, &["acme-".to_string()], Some("globex-1")).is_empty());
    }

    #[test]
    fn steps_follow_the_verdict_and_the_action() {
        let mut met = view("m", 2, 1, 50, 50);
        assert_eq!(Step::of(&met), Step::Promote);
        met.spec.rule = Some(rule(RuleAction::Report));
        assert_eq!(Step::of(&met), Step::Report);
        let failed = view("m", 2, 1, 50, 40);
        assert_eq!(failed.verdict, Verdict::Failed);
        assert_eq!(Step::of(&failed), Step::Failed);
        assert_eq!(Step::of(&view("m", 2, 1, 5, 5)), Step::Wait);
        let mut no_rule = view("m", 2, 1, 50, 50);
        no_rule.spec.rule = None;
        no_rule.verdict = Verdict::NoRule;
        assert_eq!(Step::of(&no_rule), Step::Wait);
        assert_eq!(
            Step::Failed.labels(RuleAction::Promote),
            Some(["failed", "promote"])
        );
        assert_eq!(Step::Wait.labels(RuleAction::Report), None);
    }

    #[test]
    fn each_verdict_is_news_once_per_shadow_and_forgotten_with_it() {
        let mut judged = Judged::default();
        let met = view("m", 2, 1, 50, 50);
        assert!(judged.first(&met, Step::Promote));
        assert!(!judged.first(&met, Step::Promote));
        assert!(judged.first(&met, Step::Failed), "a later failure is news");
        assert!(!judged.first(&met, Step::Wait));
        assert!(judged.to_promote(&met));
        judged.promoted(&met);
        assert!(!judged.to_promote(&met));
        // The same model set again (a new since_ms) is a new shadow.
        let again = view("m", 2, 2, 50, 50);
        assert!(judged.to_promote(&again));
        assert!(judged.first(&again, Step::Promote));
        judged.retain(std::slice::from_ref(&again), true);
        assert_eq!(judged.seen.len(), 1);
        judged.retain(&[], false);
        assert_eq!(judged.seen.len(), 1, "a scorer missing: kept");
        judged.retain(&[], true);
        assert!(judged.seen.is_empty());
    }

    /// A shadow that failed (0.992 at 500 requests against 0.995) is never promoted by
    /// this judge: not when its agreement recovers, not when the scorer holding the
    /// disagreements misses a round (nor when no answering scorer reports it).
    #[test]
    fn a_failure_is_final_for_the_shadow() {
        let mut judged = Judged::default();
        let with_rule = |mut v: ShadowView| {
            v.spec.rule = Some(ShadowRule {
                min_requests: 500,
                min_agreement: 0.995,
                max_errors: 0,
                action: RuleAction::Promote,
            });
            v.verdict = verdict(v.spec.rule.as_ref(), &v.counts);
            v
        };
        // Round 1, complete: 496 of 500 agree.
        let failed = merge(
            &[
                report("a", vec![with_rule(view("m", 2, 7, 250, 250))]),
                report("b", vec![with_rule(view("m", 2, 7, 250, 246))]),
            ],
            &[],
            None,
        );
        judged.retain(&failed, true);
        assert_eq!(failed[0].verdict, Verdict::Failed);
        let step = judged.step(&failed[0]);
        assert_eq!(step, Step::Failed);
        assert!(judged.first(&failed[0], step));
        // Round 2: `b` (the disagreements) is missing; `a` alone meets the rule.
        let partial = merge(
            &[report("a", vec![with_rule(view("m", 2, 7, 600, 600))])],
            &[],
            None,
        );
        assert_eq!(Step::of(&partial[0]), Step::Promote, "the counts alone");
        judged.retain(&partial, false);
        assert_eq!(judged.step(&partial[0]), Step::Failed);
        assert!(!judged.first(&partial[0], Step::Failed), "logged once");
        // Round 3: no answering scorer reports it; round 4: it is back, recovered.
        judged.retain(&[], false);
        let recovered = merge(
            &[
                report("a", vec![with_rule(view("m", 2, 7, 5000, 5000))]),
                report("b", vec![with_rule(view("m", 2, 7, 250, 246))]),
            ],
            &[],
            None,
        );
        assert_eq!(recovered[0].verdict, Verdict::Met);
        judged.retain(&recovered, true);
        assert_eq!(judged.step(&recovered[0]), Step::Failed);
        // The model set again (a new since_ms) is judged afresh.
        let again = with_rule(view("m", 2, 8, 600, 600));
        judged.retain(std::slice::from_ref(&again), false);
        assert_eq!(judged.step(&again), Step::Promote);
        assert_eq!(judged.seen.len(), 0, "the older shadow is forgotten");
    }
}
