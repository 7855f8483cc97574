//! `mmctl top`: the pool view (`/v2/mm/pool`, what `/status` draws) as a live terminal
//! screen: hit ratio with its sparkline, each scorer's resident bytes against its budget,
//! the hottest models and the recent evictions. Polls every `--interval`; `q`, Esc or
//! Ctrl-C quits; `r` refreshes now. A failed poll keeps the last view and says why.

use std::time::{Duration, Instant};

use anyhow::bail;
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Sparkline, Table};
use serde_json::Value;

use crate::client::Client;
use crate::operate::duration;
use crate::table::bytes;

pub async fn run(client: &Client, interval: f64) -> anyhow::Result<()> {
    if !(0.1..=3600.0).contains(&interval) {
        bail!("--interval must be between 0.1 and 3600 seconds");
    }
    let interval = Duration::from_secs_f64(interval);
    // Fails early, before the screen is taken, when the proxy cannot be reached.
    let mut view = client.get("/v2/mm/pool").await?.body;
    let mut error: Option<String> = None;
    let mut terminal = ratatui::init();
    let result = async {
        loop {
            let polled = Instant::now();
            terminal.draw(|frame| draw(frame, &view, error.as_deref(), client.base()))?;
            if wait_for_key(interval, polled)? == Key::Quit {
                return Ok(());
            }
            match client.get("/v2/mm/pool").await {
                Ok(answer) => {
                    view = answer.body;
                    error = None;
                }
                Err(e) => error = Some(e.to_string()),
            }
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

fn draw(frame: &mut Frame<'_>, view: &Value, error: Option<&str>, proxy: &str) {
    let scorers = view["scorers"].as_array().map_or(0, Vec::len) as u16;
    let [header, spark, pool, lists, footer] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(5),
        Constraint::Length(scorers + 3),
        Constraint::Min(6),
        Constraint::Length(1),
    ])
    .areas(frame.area());

    let ratio = view["hit_ratio"]
        .as_f64()
        .map_or("-".to_string(), |r| format!("{:.1}%", 100.0 * r));
    let title = Line::from(vec![
        Span::styled("mmctl top ", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            "{proxy} · proxy {} · up {} · {} requests · ",
            view["proxy"].as_str().unwrap_or("?"),
            duration(view["uptime_seconds"].as_f64().unwrap_or(0.0)),
            view["requests"],
        )),
        Span::styled(
            format!("hit ratio {ratio}"),
            Style::new().fg(Color::Green).add_modifier(Modifier::BOLD),
        ),
    ]);
    let tracked = Line::from(format!(
        "statistics: {} models tracked in {}",
        view["statistics"]["tracked_models"],
        bytes(view["statistics"]["memory_bytes"].as_u64().unwrap_or(0)),
    ));
    frame.render_widget(Paragraph::new(vec![title, tracked]), header);

    // Oldest bucket first; a bucket without requests draws nothing.
    let mut history: Vec<(u64, u64)> = view["history"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            let hits = b["hits"].as_u64().unwrap_or(0);
            let misses = b["misses"].as_u64().unwrap_or(0);
            let ratio = (99 * hits).checked_div(hits + misses).map_or(0, |r| r + 1);
            (b["seconds_ago"].as_u64().unwrap_or(0), ratio)
        })
        .collect();
    history.sort_by_key(|b| std::cmp::Reverse(b.0));
    let points: Vec<u64> = history.into_iter().map(|(_, r)| r).collect();
    frame.render_widget(
        Sparkline::default()
            .block(Block::new().borders(Borders::ALL).title(format!(
                " hit ratio, {} s per bar ",
                view["history_bucket_seconds"]
            )))
            .data(&points)
            .max(100)
            .style(Style::new().fg(Color::Cyan)),
        spark,
    );

    let rows = view["scorers"].as_array().into_iter().flatten().map(|s| {
        let resident = s["resident_bytes"].as_u64();
        let budget = s["budget_bytes"].as_u64();
        let fill = match (resident, budget) {
            (Some(r), Some(b)) if b > 0 => Some(r as f64 / b as f64),
            _ => None,
        };
        let healthy = s["healthy"].as_bool() == Some(true);
        Row::new(vec![
            Cell::from(s["name"].as_str().unwrap_or("").to_string()),
            Cell::from(if healthy { "up" } else { "DOWN" }).style(if healthy {
                Style::new().fg(Color::Green)
            } else {
                Style::new().fg(Color::Red)
            }),
            Cell::from(meter(fill, 20)),
            Cell::from(format!(
                "{} / {}",
                resident.map_or("-".into(), bytes),
                budget.map_or("-".into(), bytes)
            )),
            Cell::from(s["resident_models"].to_string()),
            Cell::from(s["hits"].to_string()),
            Cell::from(s["misses"].to_string()),
            Cell::from(s["loads"].to_string()),
        ])
    });
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Min(12),
                Constraint::Length(5),
                Constraint::Length(27),
                Constraint::Length(23),
                Constraint::Length(7),
                Constraint::Length(9),
                Constraint::Length(8),
                Constraint::Length(7),
            ],
        )
        .header(
            Row::new([
                "SCORER",
                "",
                "RESIDENT / BUDGET",
                "",
                "MODELS",
                "HITS",
                "MISSES",
                "LOADS",
            ])
            .style(Style::new().add_modifier(Modifier::BOLD)),
        )
        .block(Block::new().borders(Borders::ALL).title(" scorers ")),
        pool,
    );

    let [hot, evicted] =
        Layout::horizontal([Constraint::Percentage(45), Constraint::Percentage(55)]).areas(lists);
    let hottest = view["hottest"].as_array().into_iter().flatten().map(|h| {
        Row::new(vec![
            h["model"].as_str().unwrap_or("").to_string(),
            format!("{:.2}", h["rate"].as_f64().unwrap_or(0.0)),
            h["owner"].as_str().unwrap_or("-").to_string(),
        ])
    });
    frame.render_widget(
        Table::new(
            hottest,
            [
                Constraint::Min(14),
                Constraint::Length(8),
                Constraint::Min(10),
            ],
        )
        .header(
            Row::new(["MODEL", "REQ/S", "OWNER"]).style(Style::new().add_modifier(Modifier::BOLD)),
        )
        .block(Block::new().borders(Borders::ALL).title(" hottest models ")),
        hot,
    );
    let evictions = view["evictions"].as_array().into_iter().flatten().map(|e| {
        Row::new(vec![
            format!("{} v{}", e["model"].as_str().unwrap_or(""), e["version"]),
            bytes(e["bytes"].as_u64().unwrap_or(0)),
            e["reason"].as_str().unwrap_or("").to_string(),
            e["scorer"].as_str().unwrap_or("").to_string(),
            duration(e["seconds_ago"].as_f64().unwrap_or(0.0)),
        ])
    });
    frame.render_widget(
        Table::new(
            evictions,
            [
                Constraint::Min(14),
                Constraint::Length(10),
                Constraint::Length(13),
                Constraint::Min(10),
                Constraint::Length(7),
            ],
        )
        .header(
            Row::new(["MODEL", "BYTES", "REASON", "SCORER", "AGO"])
                .style(Style::new().add_modifier(Modifier::BOLD)),
        )
        .block(
            Block::new()
                .borders(Borders::ALL)
                .title(" recent evictions "),
        ),
        evicted,
    );

    let status = match error {
        Some(e) => Line::styled(
            format!("poll failed, showing the last view: {e}"),
            Style::new().fg(Color::Red),
        ),
        None => Line::from("q quits · r refreshes now"),
    };
    frame.render_widget(Paragraph::new(status), footer);
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
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use serde_json::json;

    #[test]
    fn meters_fill_in_proportion() {
        assert_eq!(meter(Some(0.5), 4), "██░░   50%");
        assert_eq!(meter(Some(1.3), 2), "██  130%");
        assert_eq!(meter(None, 4), "-");
    }

    /// The screen shows every part of the view it was given (the real terminal is tested
    /// in tests/tests/cli.rs through tmux).
    #[test]
    fn the_screen_shows_the_view() {
        let view = json!({
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
        });
        let mut terminal = Terminal::new(TestBackend::new(120, 30)).unwrap();
        terminal
            .draw(|frame| draw(frame, &view, None, "http://x"))
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
        ] {
            assert!(screen.contains(needle), "{needle} missing from the screen");
        }
    }
}
