//! Which setting of `serve` an error is about. Each is named once here, with the id clap
//! gives its field; a test checks the list against the command line, so a setting added
//! there and missing here (or a misspelt id) fails the build's tests, not a user.

macro_rules! settings {
    ($($setting:ident => $id:literal,)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Setting {
            $($setting,)*
        }

        impl Setting {
            pub const ALL: &'static [Setting] = &[$(Setting::$setting,)*];

            /// The id clap knows the setting by: its field name in `Settings`.
            pub fn id(self) -> &'static str {
                match self {
                    $(Setting::$setting => $id,)*
                }
            }
        }
    };
}

settings! {
    Listen => "listen",
    RedisUrl => "redis_url",
    RedisSentinels => "redis_sentinels",
    RedisMasterName => "redis_master_name",
    RedisPasswordFile => "redis_password_file",
    RedisSentinelPasswordFile => "redis_sentinel_password_file",
    RedisMinReplicas => "redis_min_replicas",
    RedisWaitAof => "redis_wait_aof",
    DataDir => "data_dir",
    CounterKey => "counter_key",
    Replica => "replica",
    AppVersion => "app_version",
    LogFormat => "log_format",
    ShutdownTimeout => "shutdown_timeout",
    HeaderReadTimeout => "header_read_timeout",
    SendTimeout => "send_timeout",
    RequestTimeout => "request_timeout",
    StoreTimeout => "store_timeout",
    MaxConnections => "max_connections",
    Workers => "workers",
    Counters => "counters",
    MaxCounters => "max_counters",
    HistoryDays => "history_days",
    RateLimit => "rate_limit",
    TutorialRateLimit => "tutorial_rate_limit",
    TrustedProxies => "trusted_proxies",
    AdminTokenFile => "admin_token_file",
}
