//! `mmctl top`: the pool view (`/v2/mm/pool`, what `/status` draws) as a live terminal
//! screen: hit ratio with its sparkline, each scorer's resident bytes against its budget,
//! the hottest models and the recent evictions, and the busiest models' ledger
//! (`/v2/mm/ledger`: requests, error share, p50 and p99, loads, the newest version's share). Polls every `--interval`; `q`, Esc or
//! Ctrl-C quits; `r` refreshes now. A failed poll keeps the last view and says why.

use std::time::{Duration, Instant};

use anyhow::bail;
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use manymodels_contract::ledger::PoolLedger;
use manymodels_contract::pool::PoolView;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Sparkline, Table};

use crate::client::Client;
use crate::operate::{duration, fill};
use crate::table::{bytes, opt};

pub async fn run(client: &Client, interval: f64) -> anyhow::Result<()> {
    if !(0.1..=3600.0).contains(&interval) {
        bail!("--interval must be between 0.1 and 3600 seconds");
    }
    let interval = Duration::from_secs_f64(interval);
    // Fails early, before the screen is taken, when the proxy cannot be reached.
    let mut view: PoolView = client.get_as("/v2/mm/pool").await?;
    // The ledger is a panel beside the view: the screen works without it.
    let mut ledger: Result<PoolLedger, String> =
        client.get_as(LEDGER).await.map_err(|e| e.to_string());
    let mut error: Option<String> = None;
    let mut terminal = ratatui::init();
    let result = async {
        loop {
            let polled = Instant::now();
            terminal.draw(|frame| {
                draw(frame, &view, error.as_deref(), client.base());
                draw_ledger(frame, &ledger);
            })?;
            if wait_for_key(interval, polled)? == Key::Quit {
                return Ok(());
            }
            match client.get_as("/v2/mm/pool").await {
                Ok(polled) => {
                    view = polled;
                    error = None;
                }
                Err(e) => error = Some(e.to_string()),
            }
            ledger = client.get_as(LEDGER).await.map_err(|e| e.to_string());
        }
    }
    .await;
    ratatui::restore();
    result
}

#[derive(PartialEq, Eq)]
enum Key {
    Quit,
    Refresh,
}

/// Waits until `interval` after `since` or a key: `q`, Esc and Ctrl-C quit, anything else
/// (`r`) refreshes now.
fn wait_for_key(interval: Duration, since: Instant) -> anyhow::Result<Key> {
    loop {
        let left = interval.saturating_sub(since.elapsed());
        if left.is_zero() {
            return Ok(Key::Refresh);
        }
        // crossterm's poll blocks this thread; the runtime has others.
        if tokio::task::block_in_place(|| event::poll(left))?
            && let Event::Key(key) = event::read()?
            && key.kind == KeyEventKind::Press
        {
            return Ok(match key.code {
                KeyCode::Char('q') | KeyCode::Esc => Key::Quit,
                KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => Key::Quit,
                _ => Key::Refresh,
            });
        }
    }
}

/// The busiest models' ledger, as the panel polls it.
const LEDGER: &str = "/v2/mm/ledger?top=10";
/// Rows of the screen the ledger panel takes, at the bottom above the footer.
const LEDGER_ROWS: u16 = 13;

/// The ledger panel, in the bottom rows above the footer (`draw` leaves them free).
fn draw_ledger(frame: &mut Frame<'_>, ledger: &Result<PoolLedger, String>) {
    let area = frame.area();
    if area.height < LEDGER_ROWS + 12 {
        return;
    }
    let panel = ratatui::layout::Rect {
        y: area.height - 1 - LEDGER_ROWS,
        height: LEDGER_ROWS,
        ..area
    };
    match ledger {
        Ok(ledger) => frame.render_widget(ledger_table(ledger), panel),
        Err(e) => frame.render_widget(
            Paragraph::new(Line::styled(
                format!("the ledger could not be read: {e}"),
                Style::new().fg(Color::Red),
            ))
            .block(
                Block::new()
                    .borders(Borders::ALL)
                    .title(" models (ledger) "),
            ),
            panel,
        ),
    }
}

fn ledger_table(ledger: &PoolLedger) -> Table<'static> {
    let rows = ledger.report.models.iter().map(|m| {
        let c = &m.counts;
        let share = crate::ledger::error_share(c);
        let errors = Cell::from(format!("{:.2}%", 100.0 * share)).style(if share > 0.01 {
            Style::new().fg(Color::Red).add_modifier(Modifier::BOLD)
        } else {
            Style::new()
        });
        let q = |pick: fn(&manymodels_contract::ledger::Quantiles) -> f64| {
            c.quantiles
                .map_or("-".into(), |q| crate::ledger::ms(pick(&q)))
        };
        Row::new(vec![
            Cell::from(m.model.clone()),
            Cell::from(c.requests.to_string()),
            errors,
            Cell::from(crate::ledger::error_kinds(c)),
            Cell::from(q(|q| q.p50)),
            Cell::from(q(|q| q.p99)),
            Cell::from(c.loads.to_string()),
            Cell::from(crate::ledger::newest_share(m)),
        ])
    });
    let widths = [
        Constraint::Min(14),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Min(12),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(6),
        Constraint::Length(9),
    ];
    let pool = &ledger.pool;
    Table::new(rows, widths)
        .header(bold_header([
            "MODEL", "REQUESTS", "ERR", "ERRORS", "P50", "P99", "LOADS", "NEWEST",
        ]))
        .block(Block::new().borders(Borders::ALL).title(format!(
            " models (ledger): {} requests, {:.2}% failed, from {} scorer(s) ",
            pool.requests,
            100.0 * crate::ledger::error_share(pool),
            ledger.scorers.len()
        )))
}

fn draw(frame: &mut Frame<'_>, view: &PoolView, error: Option<&str>, proxy: &str) {
    let tall = frame.area().height >= LEDGER_ROWS + 12;
    let [header, spark, pool, lists, _ledger, footer] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(5),
        Constraint::Length(view.scorers.len() as u16 + 3),
        Constraint::Min(6),
        Constraint::Length(if tall { LEDGER_ROWS } else { 0 }),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(title(view, proxy)), header);
    frame.render_widget(sparkline(view), spark);
    frame.render_widget(scorers(view), pool);
    let [hot, evicted] =
        Layout::horizontal([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(lists);
    frame.render_widget(hottest(view), hot);
    frame.render_widget(evictions(view), evicted);
    let status = match error {
        Some(e) => Line::styled(
            format!("poll failed, showing the last view: {e}"),
            Style::new().fg(Color::Red),
        ),
        None => Line::from("q quits · r refreshes now"),
    };
    frame.render_widget(Paragraph::new(status), footer);
}

/// The header: the proxy, its uptime, requests and hit ratio; the statistics' footprint.
fn title(view: &PoolView, proxy: &str) -> Vec<Line<'static>> {
    let ratio = view
        .hit_ratio
        .map_or("-".to_string(), |r| format!("{:.1}%", 100.0 * r));
    let title = Line::from(vec![
        Span::styled("mmctl top ", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            "{proxy} · proxy {} · up {} · {} requests · ",
            view.proxy,
            duration(view.uptime_seconds),
            view.requests,
        )),
        Span::styled(
            format!("hit ratio {ratio}"),
            Style::new().fg(Color::Green).add_modifier(Modifier::BOLD),
        ),
    ]);
    let tracked = Line::from(format!(
        "statistics: {} models tracked in {}",
        view.statistics.tracked_models,
        bytes(view.statistics.memory_bytes as u64),
    ));
    vec![title, tracked]
}

/// The hit ratio per history bucket, oldest first; a bucket without requests draws
/// nothing.
fn sparkline(view: &PoolView) -> Sparkline<'static> {
    let mut history: Vec<(u64, u64)> = view
        .history
        .iter()
        .map(|b| {
            let ratio = (99 * b.hits)
                .checked_div(b.hits + b.misses)
                .map_or(0, |r| r + 1);
            (b.seconds_ago, ratio)
        })
        .collect();
    history.sort_by_key(|b| std::cmp::Reverse(b.0));
    let points: Vec<u64> = history.into_iter().map(|(_, r)| r).collect();
    Sparkline::default()
        .block(Block::new().borders(Borders::ALL).title(format!(
            " hit ratio, {} s per bar ",
            view.history_bucket_seconds
        )))
        .data(&points)
        .max(100)
        .style(Style::new().fg(Color::Cyan))
}

fn bold_header<'a>(titles: impl IntoIterator<Item = &'a str>) -> Row<'a> {
    Row::new(titles).style(Style::new().add_modifier(Modifier::BOLD))
}

/// Each scorer: health, its memory against its budget, its counts.
fn scorers(view: &PoolView) -> Table<'static> {
    let rows = view.scorers.iter().map(|s| {
        let healthy = Cell::from(if s.healthy { "up" } else { "DOWN" }).style(if s.healthy {
            Style::new().fg(Color::Green)
        } else {
            Style::new().fg(Color::Red)
        });
        Row::new(vec![
            Cell::from(s.name.clone()),
            healthy,
            Cell::from(meter(fill(s.resident_bytes, s.budget_bytes), 20)),
            Cell::from(format!(
                "{} / {}",
                s.resident_bytes.map_or("-".into(), bytes),
                s.budget_bytes.map_or("-".into(), bytes)
            )),
            Cell::from(opt(s.resident_models)),
            Cell::from(opt(s.hits)),
            Cell::from(opt(s.misses)),
            Cell::from(opt(s.loads)),
        ])
    });
    let widths = [
        Constraint::Min(12),
        Constraint::Length(5),
        Constraint::Length(27),
        Constraint::Length(23),
        Constraint::Length(7),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(7),
    ];
    Table::new(rows, widths)
        .header(bold_header([
            "SCORER",
            "",
            "RESIDENT / BUDGET",
            "",
            "MODELS",
            "HITS",
            "MISSES",
            "LOADS",
        ]))
        .block(Block::new().borders(Borders::ALL).title(" scorers "))
}

fn hottest(view: &PoolView) -> Table<'static> {
    let rows = view.hottest.iter().map(|h| {
        Row::new(vec![
            h.model.clone(),
            format!("{:.2}", h.rate),
            h.owner.clone().unwrap_or_else(|| "-".into()),
        ])
    });
    let widths = [
        Constraint::Min(14),
        Constraint::Length(8),
        Constraint::Min(10),
    ];
    Table::new(rows, widths)
        .header(bold_header(["MODEL", "REQ/S", "OWNER"]))
        .block(Block::new().borders(Borders::ALL).title(" hottest models "))
}

fn evictions(view: &PoolView) -> Table<'static> {
    let rows = view.evictions.iter().map(|e| {
        Row::new(vec![
            format!("{} v{}", e.model, e.version),
            bytes(e.bytes),
            e.reason.as_str().to_string(),
            e.scorer.clone(),
            duration(e.seconds_ago),
        ])
    });
    let widths = [
        Constraint::Min(14),
        Constraint::Length(10),
        Constraint::Length(13),
        Constraint::Min(10),
        Constraint::Length(7),
    ];
    Table::new(rows, widths)
        .header(bold_header(["MODEL", "BYTES", "REASON", "SCORER", "AGO"]))
        .block(
            Block::new()
                .borders(Borders::ALL)
                .title(" recent evictions "),
        )
}

/// `███████░░░  62%`: a fill of `width` cells and the percentage.
fn meter(fill: Option<f64>, width: usize) -> String {
    match fill {
        Some(f) => {
            let full = ((f.clamp(0.0, 1.0)) * width as f64).round() as usize;
            format!(
                "{}{} {:>4.0}%",
                "█".repeat(full),
                "░".repeat(width - full),
                100.0 * f
            )
        }
        None => "-".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use serde_json::json;

    use super::*;

    #[test]
    fn meters_fill_in_proportion() {
        assert_eq!(meter(Some(0.5), 4), "██░░   50%");
        assert_eq!(meter(Some(1.3), 2), "██  130%");
        assert_eq!(meter(None, 4), "-");
    }

    /// The screen shows every part of the view it was given (the real terminal is tested
    /// in tests/tests/it/cli/mod.rs through tmux).
    #[test]
    fn the_screen_shows_the_view() {
        let view: PoolView = serde_json::from_value(json!({
            "proxy": "p0", "uptime_seconds": 75.0, "requests": 1234, "hit_ratio": 0.875,
            "history_bucket_seconds": 5,
            "history": [{ "seconds_ago": 5, "hits": 7, "misses": 1 }, { "seconds_ago": 0, "hits": 1, "misses": 0 }],
            "scorers": [{ "name": "scorer-a", "addr": "127.0.0.1:1", "healthy": true,
                "budget_bytes": 1000, "resident_bytes": 500, "resident_models": 3,
                "hits": 10, "misses": 2, "loads": 2 }],
            "hottest": [{ "model": "store-0042", "rate": 1.5, "owner": "scorer-a" }],
            "evictions": [{ "model": "store-0007", "version": 2, "bytes": 2048,
                "reason": "capacity", "scorer": "scorer-a", "seconds_ago": 3.0 }],
            "statistics": { "tracked_models": 9, "memory_bytes": 4096 },
        }))
        .unwrap();
        let ledger: PoolLedger = serde_json::from_value(json!({
            "scorers": ["scorer-a"],
            "models": [{ "model": "store-0099", "since": 1.0, "requests": 40, "hits": 39,
                "loads": 1, "errors": { "deadline": 2 }, "rows": 40,
                "latency": { "alpha": 0.01, "max_buckets": 1024 },
                "quantiles": { "p50": 0.0012, "p90": 0.002, "p99": 0.0031, "max": 0.004 },
                "versions": { "versions": [[2, 10], [1, 30]] } }],
            "tail": { "requests": 0, "hits": 0, "loads": 0, "rows": 0,
                "latency": { "alpha": 0.01, "max_buckets": 1024 } },
            "pool": { "requests": 40, "hits": 39, "loads": 1, "rows": 40,
                "errors": { "deadline": 2 }, "latency": { "alpha": 0.01, "max_buckets": 1024 } },
        }))
        .unwrap();
        let mut terminal = Terminal::new(TestBackend::new(120, 40)).unwrap();
        terminal
            .draw(|frame| {
                draw(frame, &view, None, "http://x");
                draw_ledger(frame, &Ok(ledger));
            })
            .unwrap();
        let screen: String = terminal
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|c| c.symbol())
            .collect();
        for needle in [
            "hit ratio 87.5%",
            "scorer-a",
            "500 B / 1000 B",
            "50%",
            "store-0042",
            "store-0007 v2",
            "capacity",
            "1m15s",
            "store-0099",
            "5.00%",
            "deadline 2",
            "3.10 ms",
            "v2 25%",
        ] {
            assert!(screen.contains(needle), "{needle} missing from the screen");
        }
    }
}
