//! The command line every binary shares, and its way into the configuration.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Arg, ArgMatches, Args, FromArgMatches};
use manymodels_config::{Config, Sources};

use crate::telemetry::Traced;

/// The flags every binary takes.
#[derive(Args, Debug)]
pub struct Flags {
    /// TOML configuration file.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override any key, e.g. `--set log.level=debug` (repeatable; wins over file and env).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
    /// Shorthand for `--set listen=ADDR`.
    #[arg(long)]
    pub listen: Option<String>,
}

impl Flags {
    /// The configuration sources: the file, the process environment, then `--listen`, the
    /// binary's `shorthands` (as `key=value`) and last the `--set` flags, so an explicit
    /// `--set` wins over a shorthand.
    pub fn sources(&self, shorthands: impl IntoIterator<Item = String>) -> Sources<'_> {
        let mut sources = Sources::from_env(self.config.as_deref());
        sources
            .sets
            .extend(self.listen.iter().map(|listen| format!("listen={listen}")));
        sources.sets.extend(shorthands);
        sources.sets.extend(self.sets.iter().cloned());
        sources
    }
}

/// A binary as its command line shows it: its name, a one-line description, and the
/// shorthands only it has beside the shared [`Flags`].
#[derive(Clone, Debug)]
pub struct Binary {
    name: &'static str,
    about: &'static str,
    shorthands: Vec<Shorthand>,
}

/// `--{flag} VALUE`, standing for `--set` of each of `sets` with `{}` replaced by VALUE.
#[derive(Clone, Debug)]
struct Shorthand {
    flag: &'static str,
    value_name: &'static str,
    sets: &'static [&'static str],
    note: &'static str,
}

impl Binary {
    pub fn new(name: &'static str, about: &'static str) -> Self {
        Binary {
            name,
            about,
            shorthands: Vec::new(),
        }
    }

    /// Adds `--{flag} VALUE`, which stands for `--set` of each of `sets` with `{}` replaced
    /// by VALUE (before any `--set` flag, which wins); `note` ends its help line.
    pub fn shorthand(
        mut self,
        flag: &'static str,
        value_name: &'static str,
        sets: &'static [&'static str],
        note: &'static str,
    ) -> Self {
        self.shorthands.push(Shorthand {
            flag,
            value_name,
            sets,
            note,
        });
        self
    }

    /// Parses the process's command line, loads the configuration `C` and sets up tracing
    /// from its `log` section, and span export from its `trace` section (the binary's name
    /// is the exported `service.name`). `--config` also reads the environment variable
    /// `{ENV_PREFIX}CONFIG` (`MM_SCORER_CONFIG`). `--help` and `--version` exit 0 and bad
    /// flags exit 2 with a usage message (clap's); a bad configuration prints
    /// `<binary>: invalid configuration: <error>` to stderr and comes back as exit code 2
    /// for `main` to return.
    pub fn start<C: Config + Traced>(&self) -> Result<C, ExitCode> {
        let (flags, sets) = self
            .parse_from::<C>(std::env::args_os())
            .unwrap_or_else(|error| error.exit());
        let config = C::load(&flags.sources(sets)).map_err(|error| {
            eprintln!("{}: invalid configuration: {error}", self.name);
            ExitCode::from(2)
        })?;
        crate::init_tracing_with(config.log(), self.name, config.trace());
        Ok(config)
    }

    /// The shared flags and the `key=value` settings the shorthands given stand for.
    fn parse_from<C: Config>(
        &self,
        args: impl IntoIterator<Item = impl Into<OsString> + Clone>,
    ) -> Result<(Flags, Vec<String>), clap::Error> {
        let mut command = self.command::<C>();
        let matches = command.try_get_matches_from_mut(args)?;
        let flags = Flags::from_arg_matches(&matches).map_err(|e| e.format(&mut command))?;
        let sets = self.shorthands.iter().flat_map(|s| s.sets(&matches));
        Ok((flags, sets.collect()))
    }

    /// The command line: the shared flags, `--config` reading its environment variable, and
    /// the shorthands.
    fn command<C: Config>(&self) -> clap::Command {
        // Once per process: clap wants the name `'static`.
        let config_env: &'static str = format!("{}CONFIG", C::ENV_PREFIX).leak();
        // The about after the flags: `augment_args` sets the struct's doc comment as one.
        Flags::augment_args(clap::Command::new(self.name))
            .version(env!("CARGO_PKG_VERSION"))
            .about(self.about)
            .mut_arg("config", |arg| arg.env(config_env))
            .args(self.shorthands.iter().map(Shorthand::arg))
    }
}

impl Shorthand {
    fn arg(&self) -> Arg {
        let sets: Vec<String> = self
            .sets
            .iter()
            .map(|set| format!("--set {}", set.replace("{}", self.value_name)))
            .collect();
        Arg::new(self.flag)
            .long(self.flag)
            .value_name(self.value_name)
            .help(format!(
                "Shorthand for `{}` ({})",
                sets.join(" "),
                self.note
            ))
    }

    fn sets(&self, matches: &ArgMatches) -> Vec<String> {
        let Some(value) = matches.get_one::<String>(self.flag) else {
            return Vec::new();
        };
        self.sets
            .iter()
            .map(|set| set.replace("{}", value))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use manymodels_config::proxy::ProxyConfig;

    use super::*;

    fn binary() -> Binary {
        let store = &["store.kind=local", "store.path={}"];
        Binary::new("mm-test", "Tests.")
            .shorthand("scorers", "LIST", &["pool.scorers={}"], "host:port")
            .shorthand("store", "DIR", store, "local")
    }

    fn parse(args: &[&str]) -> Result<(Flags, Vec<String>), clap::Error> {
        binary().parse_from::<ProxyConfig>(args)
    }

    #[test]
    fn set_flags_come_after_the_shorthands_and_win() {
        let (flags, sets) = parse(&[
            "mm-test",
            "--set",
            "listen=127.0.0.1:3",
            "--listen",
            "127.0.0.1:2",
            "--scorers",
            "a:1",
            "--store",
            "/m",
        ])
        .unwrap();
        let sources = flags.sources(sets);
        assert_eq!(
            sources.sets,
            [
                "listen=127.0.0.1:2",
                "pool.scorers=a:1",
                "store.kind=local",
                "store.path=/m",
                "listen=127.0.0.1:3"
            ]
        );
        assert_eq!(parse(&["mm-test"]).unwrap().1, Vec::<String>::new());
    }

    #[test]
    fn help_names_the_binary_its_shorthands_and_the_config_variable() {
        let help = binary().command::<ProxyConfig>().render_help().to_string();
        for text in [
            "Tests.",
            "mm-test",
            "Shorthand for `--set pool.scorers=LIST` (host:port)",
            "--set store.kind=local --set store.path=DIR",
            "[env: MM_PROXY_CONFIG=]",
        ] {
            assert!(help.contains(text), "{text} missing from:\n{help}");
        }
        let version = parse(&["mm-test", "--version"]).err().unwrap();
        assert_eq!(version.kind(), clap::error::ErrorKind::DisplayVersion);
        assert!(parse(&["mm-test", "--stor", "x"]).is_err());
    }
}
