//! The metrics tables: every metric each binary registers, with its type, its labels and
//! their values, and its help text.
//!
//! Names, types, help and label names are read from the registrations themselves
//! (`registry.counter_vec("name", "help", &["label"])` in `scorer/src/metrics.rs` and
//! `proxy/src/metrics.rs`, parsed with `syn`; the tests check them against the text a
//! freshly built `Metrics` renders). A label's values come from the code too, by the rule
//! [`values`] names for it: a constant of the code (`EvictionReason::ALL`), the string
//! literals the code passes where the label is set, or the values a new `Metrics` starts
//! with. A label no rule knows fails the generation, so a new label cannot go undocumented.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use syn::visit::Visit;

use super::cell;

/// One `registry.<kind>(name, help[, labels])` call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub name: String,
    /// `counter`, `gauge` or `histogram`, as Prometheus's `# TYPE` line says it.
    pub kind: &'static str,
    pub help: String,
    pub labels: Vec<String>,
}

/// The registrations in one Rust source file, in source order.
pub fn registrations(source: &str) -> Result<Vec<Registration>> {
    struct Finder(Vec<Registration>);
    impl<'ast> Visit<'ast> for Finder {
        fn visit_expr_method_call(&mut self, call: &'ast syn::ExprMethodCall) {
            let kind = match call.method.to_string().as_str() {
                "counter" | "counter_vec" => Some("counter"),
                "gauge" | "gauge_vec" => Some("gauge"),
                "histogram" => Some("histogram"),
                _ => None,
            };
            let args: Vec<&syn::Expr> = call.args.iter().collect();
            if let (Some(kind), Some(name), Some(help)) = (
                kind,
                args.first().and_then(|e| literal(e)),
                args.get(1).and_then(|e| literal(e)),
            ) {
                let labels = if call.method.to_string().ends_with("_vec") {
                    args.get(2).map(|e| literals_in(e)).unwrap_or_default()
                } else {
                    Vec::new()
                };
                self.0.push(Registration {
                    name,
                    kind,
                    help,
                    labels,
                });
            }
            syn::visit::visit_expr_method_call(self, call);
        }
    }
    let file = syn::parse_file(source)?;
    let mut finder = Finder(Vec::new());
    finder.visit_file(&file);
    Ok(finder.0)
}

/// Where a label's values come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Values {
    /// A bounded set the code names.
    Set(Vec<String>),
    /// Not a set the code fixes: what a value is.
    Open(String),
}

/// The values of `label` on `metric`, by the rule for that label.
fn values(root: &Path, metric: &str, label: &str) -> Result<Values> {
    let set = |values: &[&str]| Values::Set(values.iter().map(|v| v.to_string()).collect());
    Ok(match (metric, label) {
        // `finish(&scorer, "infer", ..)`, `model_call(scorer, "load", ..)`, and the gRPC
        // service's `self.finish("grpc_infer", ..)`: every answer is counted there.
        ("mm_scorer_requests_total", "route") => Values::Set(call_literals(
            &root.join("scorer/src"),
            &["finish", "model_call"],
        )?),
        ("mm_scorer_requests_total", "code") => Values::Open(
            "the answer's HTTP status code (a gRPC call counts the status of its REST twin)".into(),
        ),
        // `ScorerError::kind`.
        ("mm_scorer_errors_total", "kind") => {
            Values::Set(fn_literals(&root.join("scorer/src/error.rs"), "kind")?)
        }
        ("mm_scorer_engine_loads_total", "engine") => Values::Set(
            manymodels_engine::Engine::ALL
                .map(|e| e.as_str().to_string())
                .to_vec(),
        ),
        // `metrics.images.with_label_values(&["written"])` and the like.
        ("mm_scorer_images_total", "event") => {
            Values::Set(label_literals(&root.join("scorer/src"), "images")?)
        }
        ("mm_scorer_stats_refused_total", "reason") => {
            set(&manymodels_contract::StatsRefusal::REASONS)
        }
        ("mm_scorer_cache_evictions_total", "reason") => Values::Set(
            manymodels_contract::EvictionReason::ALL
                .map(|r| r.as_str().to_string())
                .to_vec(),
        ),
        // Both priorities are registered up front (`Metrics::new`).
        ("mm_scorer_loads_started_total", "priority") => Values::Set(const_literals(
            &root.join("scorer/src/metrics.rs"),
            "LOAD_PRIORITIES",
        )?),
        // Both arms are registered up front (`Metrics::new`).
        ("mm_scorer_canary_requests_total", "arm") => Values::Set(const_literals(
            &root.join("scorer/src/metrics.rs"),
            "CANARY_ARMS",
        )?),
        // All four outcomes are registered up front (`Metrics::new`).
        ("mm_scorer_capture_total", "outcome") => Values::Set(const_literals(
            &root.join("scorer/src/metrics.rs"),
            "CAPTURE_OUTCOMES",
        )?),
        // All four outcomes are registered up front (`Metrics::new`).
        ("mm_scorer_shadow_runs_total", "outcome") => Values::Set(const_literals(
            &root.join("scorer/src/metrics.rs"),
            "SHADOW_OUTCOMES",
        )?),
        ("mm_scorer_explanations_total", "outcome") => Values::Set(const_literals(
            &root.join("scorer/src/metrics.rs"),
            "EXPLANATION_OUTCOMES",
        )?),
        ("mm_proxy_requests_total", "outcome") => Values::Set(const_literals(
            &root.join("proxy/src/metrics.rs"),
            "OUTCOMES",
        )?),
        ("mm_proxy_batch_records_total", "outcome") => Values::Set(const_literals(
            &root.join("proxy/src/metrics.rs"),
            "BATCH_OUTCOMES",
        )?),
        // The judge's labels, registered up front (`Metrics::new`).
        ("mm_proxy_shadow_verdicts_total", "verdict") => Values::Set(const_literals(
            &root.join("proxy/src/metrics.rs"),
            "SHADOW_VERDICTS",
        )?),
        ("mm_proxy_shadow_verdicts_total", "action") => Values::Set(const_literals(
            &root.join("proxy/src/metrics.rs"),
            "SHADOW_ACTIONS",
        )?),
        ("mm_proxy_shadow_promotions_total", "result") => Values::Set(const_literals(
            &root.join("proxy/src/metrics.rs"),
            "SHADOW_PROMOTIONS",
        )?),
        ("mm_proxy_scorer_inflight", "scorer") => Values::Open(
            "each scorer's name in the pool (`host:port`, or `<SRV target>:<port>`)".into(),
        ),
        ("mm_proxy_requests_by_key_total", "key") => Values::Open(format!(
            "the key's configured name (`{}` for a plain key), or `none` when no key matched",
            manymodels_config::proxy::ApiKey::UNNAMED
        )),
        // `KeyCheck { counted: Some((name, "allowed")), .. }` in `keys::check`.
        ("mm_proxy_requests_by_key_total", "outcome") => Values::Set(field_tuple_literals(
            &root.join("proxy/src/keys.rs"),
            "counted",
            1,
        )?),
        _ => bail!(
            "no rule for the values of label `{label}` on `{metric}`: add one to \
             xtask/src/docs/metrics.rs (a constant of the code, the literals it passes, or \
             `Values::Open` saying what a value is)"
        ),
    })
}

/// The generated region of `docs/metrics.md`.
pub fn render(root: &Path) -> Result<String> {
    let mut out = String::new();
    for (title, file) in [
        ("Scorer (`mm-scorer`)", "scorer/src/metrics.rs"),
        ("Proxy (`mm-proxy`)", "proxy/src/metrics.rs"),
    ] {
        let path = root.join(file);
        let source = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let found =
            registrations(&source).with_context(|| format!("parsing {}", path.display()))?;
        if found.is_empty() {
            bail!("no metric registrations found in {file}");
        }
        out.push_str(&format!(
            "### {title}\n\nRegistered in `{file}`.\n\n| metric | type | labels: values | help |\n|---|---|---|---|\n"
        ));
        for metric in &found {
            let mut labels = Vec::new();
            for label in &metric.labels {
                let values = match values(root, &metric.name, label)? {
                    Values::Set(set) if set.is_empty() => {
                        bail!("no values found for label `{label}` of `{}`", metric.name)
                    }
                    Values::Set(set) => set
                        .iter()
                        .map(|v| format!("`{v}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    Values::Open(what) => what,
                };
                labels.push(format!("`{label}`: {values}"));
            }
            let labels = if labels.is_empty() {
                "-".to_string()
            } else {
                labels.join("; ")
            };
            out.push_str(&format!(
                "| `{}` | {} | {} | {} |\n",
                metric.name,
                metric.kind,
                cell(&labels),
                cell(&metric.help)
            ));
        }
        out.push('\n');
    }
    // No blank line before the end marker.
    out.pop();
    Ok(out)
}

fn literal(expr: &syn::Expr) -> Option<String> {
    match expr {
        syn::Expr::Lit(syn::ExprLit {
            lit: syn::Lit::Str(s),
            ..
        }) => Some(s.value()),
        _ => None,
    }
}

/// Collects every string literal it visits, in order, without repeats.
#[derive(Default)]
struct Literals(Vec<String>);

impl<'ast> Visit<'ast> for Literals {
    fn visit_lit_str(&mut self, s: &'ast syn::LitStr) {
        push_new(&mut self.0, s.value());
    }
}

/// Every string literal inside `expr`, in order, without repeats.
fn literals_in(expr: &syn::Expr) -> Vec<String> {
    let mut found = Literals::default();
    found.visit_expr(expr);
    found.0
}

fn push_new(values: &mut Vec<String>, value: String) {
    if !values.contains(&value) {
        values.push(value);
    }
}

/// The `.rs` files under `path` (or `path` itself), sorted.
fn rust_files(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in
            std::fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// Visits every file under `path` with `visitor`.
fn visit_files<V: for<'ast> Visit<'ast>>(path: &Path, visitor: &mut V) -> Result<()> {
    for file in rust_files(path)? {
        let source = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        let parsed =
            syn::parse_file(&source).with_context(|| format!("parsing {}", file.display()))?;
        visitor.visit_file(&parsed);
    }
    Ok(())
}

/// The first string-literal argument of every call of a function or method named one of
/// `callees` under `path`.
fn call_literals(path: &Path, callees: &[&str]) -> Result<Vec<String>> {
    struct Calls<'c>(&'c [&'c str], Vec<String>);
    impl Calls<'_> {
        fn take<'a>(&mut self, name: String, args: impl Iterator<Item = &'a syn::Expr>) {
            if self.0.contains(&name.as_str())
                && let Some(value) = args.filter_map(literal).next()
            {
                push_new(&mut self.1, value);
            }
        }
    }
    impl<'ast> Visit<'ast> for Calls<'_> {
        fn visit_expr_call(&mut self, call: &'ast syn::ExprCall) {
            if let syn::Expr::Path(path) = &*call.func
                && let Some(last) = path.path.segments.last()
            {
                self.take(last.ident.to_string(), call.args.iter());
            }
            syn::visit::visit_expr_call(self, call);
        }
        fn visit_expr_method_call(&mut self, call: &'ast syn::ExprMethodCall) {
            self.take(call.method.to_string(), call.args.iter());
            syn::visit::visit_expr_method_call(self, call);
        }
    }
    let mut calls = Calls(callees, Vec::new());
    visit_files(path, &mut calls)?;
    Ok(calls.1)
}

/// Every string literal in the body of each function or method named `name` in `path`.
fn fn_literals(path: &Path, name: &str) -> Result<Vec<String>> {
    struct Fns<'n>(&'n str, Vec<String>);
    impl<'ast> Visit<'ast> for Fns<'_> {
        fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
            if item.sig.ident == self.0 {
                let mut found = Literals::default();
                found.visit_block(&item.block);
                for value in found.0 {
                    push_new(&mut self.1, value);
                }
            }
            syn::visit::visit_impl_item_fn(self, item);
        }
    }
    let mut fns = Fns(name, Vec::new());
    visit_files(path, &mut fns)?;
    Ok(fns.1)
}

/// The string literals of the constant `name` in `path`.
pub(super) fn const_literals(path: &Path, name: &str) -> Result<Vec<String>> {
    struct Consts<'n>(&'n str, Vec<String>);
    impl<'ast> Visit<'ast> for Consts<'_> {
        fn visit_item_const(&mut self, item: &'ast syn::ItemConst) {
            if item.ident == self.0 {
                self.1.extend(literals_in(&item.expr));
            }
        }
    }
    let mut consts = Consts(name, Vec::new());
    visit_files(path, &mut consts)?;
    Ok(consts.1)
}

/// The labels set on the metric field `field` (`metrics.<field>.with_label_values(&[..])`)
/// under `path`: each literal given, and for a variable, the literals of the `match` it
/// was bound to (`let event = match error { .. => "stale", .. }`) in the same function.
fn label_literals(path: &Path, field: &str) -> Result<Vec<String>> {
    struct Labels<'f> {
        field: &'f str,
        /// `let name = match ..` in the function being visited: name to arm literals.
        bound: BTreeMap<String, Vec<String>>,
        found: Vec<String>,
    }
    impl<'ast> Visit<'ast> for Labels<'_> {
        fn visit_local(&mut self, local: &'ast syn::Local) {
            if let (syn::Pat::Ident(name), Some(init)) = (&local.pat, &local.init)
                && let syn::Expr::Match(m) = &*init.expr
            {
                let arms = m.arms.iter().filter_map(|arm| literal(&arm.body)).collect();
                self.bound.insert(name.ident.to_string(), arms);
            }
            syn::visit::visit_local(self, local);
        }
        fn visit_expr_method_call(&mut self, call: &'ast syn::ExprMethodCall) {
            let on_field = matches!(&*call.receiver, syn::Expr::Field(f)
                if matches!(&f.member, syn::Member::Named(n) if n == self.field));
            if call.method == "with_label_values" && on_field {
                for arg in &call.args {
                    let syn::Expr::Reference(r) = arg else {
                        continue;
                    };
                    let syn::Expr::Array(array) = &*r.expr else {
                        continue;
                    };
                    for element in &array.elems {
                        if let Some(value) = literal(element) {
                            push_new(&mut self.found, value);
                        } else if let syn::Expr::Path(p) = element
                            && let Some(name) = p.path.get_ident()
                        {
                            for value in self.bound.get(&name.to_string()).into_iter().flatten() {
                                push_new(&mut self.found, value.clone());
                            }
                        }
                    }
                }
            }
            syn::visit::visit_expr_method_call(self, call);
        }
        fn visit_item_fn(&mut self, item: &'ast syn::ItemFn) {
            self.bound.clear();
            syn::visit::visit_item_fn(self, item);
        }
        fn visit_impl_item_fn(&mut self, item: &'ast syn::ImplItemFn) {
            self.bound.clear();
            syn::visit::visit_impl_item_fn(self, item);
        }
    }
    let mut labels = Labels {
        field,
        bound: BTreeMap::new(),
        found: Vec::new(),
    };
    visit_files(path, &mut labels)?;
    Ok(labels.found)
}

/// The string literal at `index` of every tuple given to the struct field `field` in
/// `path` (`counted: Some((name, "allowed"))`).
fn field_tuple_literals(path: &Path, field: &str, index: usize) -> Result<Vec<String>> {
    struct Fields<'f>(&'f str, usize, Vec<String>);
    impl<'ast> Visit<'ast> for Fields<'_> {
        fn visit_field_value(&mut self, value: &'ast syn::FieldValue) {
            if matches!(&value.member, syn::Member::Named(n) if n == self.0) {
                struct Tuples(usize, Vec<String>);
                impl<'ast> Visit<'ast> for Tuples {
                    fn visit_expr_tuple(&mut self, tuple: &'ast syn::ExprTuple) {
                        if let Some(value) = tuple.elems.iter().nth(self.0).and_then(literal) {
                            push_new(&mut self.1, value);
                        }
                        syn::visit::visit_expr_tuple(self, tuple);
                    }
                }
                let mut tuples = Tuples(self.1, Vec::new());
                tuples.visit_expr(&value.expr);
                for value in tuples.1 {
                    push_new(&mut self.2, value);
                }
            }
            syn::visit::visit_field_value(self, value);
        }
    }
    let mut fields = Fields(field, index, Vec::new());
    visit_files(path, &mut fields)?;
    Ok(fields.2)
}
