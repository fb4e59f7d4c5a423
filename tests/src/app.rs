//! The whole system in-process for one test ([`TestApp`]), on its own database and
//! nats-server.

use super::*;

/// The whole system for one test: gateway on port 0, relay, every projector and the order
/// saga, its own database and nats-server. Everything stops when it is dropped.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    pub http: reqwest::Client,
    pub db: TestDb,
    pub pool: PgPool,
    pub nats: TestNats,
    /// The default user, registered at spawn, and their bearer token.
    pub user_id: String,
    pub token: String,
    /// The saga's fault points (`saga.between_lines`, `saga.before_commit`, `saga.after_commit`).
    pub saga_faults: chronicle_bus::Faults,
    saga: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    saga_wiring: Arc<Wiring>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How a [`TestApp`] differs from the defaults.
pub struct TestOptions {
    pub gateway: Box<dyn FnOnce(&mut chronicle_gateway::GatewayConfig) + Send>,
    pub saga: chronicle_sagas::OrderSagaConfig,
    /// Runs the saga on a command bus of its own (its own cache and group commit), as a
    /// saga in another process would, instead of the gateway's.
    pub saga_in_its_own_process: bool,
    /// The files janitor's timings (by default it sweeps every 200 ms, with 2 s of grace).
    pub janitor: chronicle_sagas::FilesJanitorConfig,
    /// The scheduler's settings; its HTTP allow list (by default `127.0.0.1`, where tests
    /// serve) is the gateway's too.
    pub scheduler: chronicle_sagas::SchedulerConfig,
    /// The alert engine's timings (by default it evaluates every 200 ms, and installs no
    /// default rules).
    pub alerts: chronicle_monitoring::AlertEngineConfig,
    /// How the simulated payment provider answers (by default it charges at once).
    pub payments: chronicle::PaymentRules,
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            gateway: Box::new(|_| {}),
            saga: chronicle_sagas::OrderSagaConfig {
                // A crashed saga's event comes back after this.
                ack_wait: Duration::from_secs(2),
                ..chronicle_sagas::OrderSagaConfig::default()
            },
            saga_in_its_own_process: false,
            janitor: chronicle_sagas::FilesJanitorConfig {
                grace: Duration::from_secs(2),
                every: Duration::from_millis(200),
                catch_up: Duration::from_secs(5),
                ..chronicle_sagas::FilesJanitorConfig::default()
            },
            scheduler: chronicle_sagas::SchedulerConfig {
                http_allow: chronicle_scheduler::AllowList::parse("127.0.0.1")
                    .expect("a valid allow list"),
                poll: Duration::from_millis(100),
                notify: chronicle_sagas::NotifyConfig {
                    allow: chronicle_scheduler::AllowList::parse("127.0.0.1")
                        .expect("a valid allow list"),
                    ..chronicle_sagas::NotifyConfig::default()
                },
                ..chronicle_sagas::SchedulerConfig::default()
            },
            alerts: chronicle_monitoring::AlertEngineConfig {
                every: Duration::from_millis(200),
                // Tests count events; the tests of the default rules turn them on.
                default_rules: false,
                ..chronicle_monitoring::AlertEngineConfig::default()
            },
            payments: chronicle::PaymentRules::default(),
        }
    }
}

impl TestApp {
    /// The system with the default gateway configuration (rate limiting off) and a logged-in
    /// user whose token [`get`](Self::get), [`post`](Self::post) and
    /// [`request`](Self::request) send.
    pub async fn spawn() -> Self {
        Self::spawn_options(TestOptions::default()).await
    }

    /// As [`spawn`](Self::spawn), with only the users named `staff` made staff at login
    /// (everyone else is a customer).
    pub async fn spawn_with_staff(staff: &[&str]) -> Self {
        let staff: Vec<String> = staff.iter().map(|s| (*s).to_owned()).collect();
        Self::spawn_with(move |config| {
            config
                .contexts
                .get_mut::<chronicle_gateway::IdentityConfig>()
                .staff_users = staff;
        })
        .await
    }

    /// As [`spawn`](Self::spawn), after `configure` has adjusted the gateway's settings.
    pub async fn spawn_with(
        configure: impl FnOnce(&mut chronicle_gateway::GatewayConfig) + Send + 'static,
    ) -> Self {
        Self::spawn_options(TestOptions {
            gateway: Box::new(configure),
            ..TestOptions::default()
        })
        .await
    }

    /// As [`spawn`](Self::spawn), with `options`.
    pub async fn spawn_options(options: TestOptions) -> Self {
        let (db, nats) = (TestDb::new().await, TestNats::start());
        let pool = db.pool().await;
        let databases = db.databases(pool.clone());
        let client = chronicle_bus::connect(&nats.url())
            .await
            .expect("connect to NATS");
        chronicle_bus::ensure_events_stream(&async_nats::jetstream::new(client.clone()))
            .await
            .expect("the EVENTS stream");
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let shutdown = move || {
            let mut rx = stopped.clone();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let mut gateway = chronicle::contexts::gateway_config(chronicle_gateway::Secret::new(
            format!(
                "{}{}",
                uuid::Uuid::new_v4().simple(),
                uuid::Uuid::new_v4().simple()
            )
            .into_bytes(),
        ));
        // Everyone is staff unless a test says otherwise (the API contract: `*` is for tests).
        gateway
            .contexts
            .get_mut::<chronicle_gateway::IdentityConfig>()
            .staff_users = vec!["*".to_owned()];
        gateway
            .contexts
            .get_mut::<chronicle_gateway::JobsConfig>()
            .http_allow = options.scheduler.http_allow.clone();
        // Every process's settings are the contexts' groups, as `chronicle` sets them.
        gateway
            .contexts
            .set(options.scheduler.notify.clone())
            .set(options.scheduler)
            .set(options.saga)
            .set(options.janitor)
            .set(options.alerts)
            .set(options.payments);
        (options.gateway)(&mut gateway);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        let base = format!("http://{}", listener.local_addr().expect("bound address"));
        let saga_faults = chronicle_bus::Faults::default();
        // The same wiring `chronicle up` builds, with test timings; its fault points are the
        // ones tests arm (on the saga).
        let wiring = Arc::new(Wiring {
            commands: chronicle_commands::CommandExecutor::for_contexts(
                &databases,
                &chronicle_bus::Faults::default(),
                Default::default(),
            ),
            db: databases.clone(),
            nats: client,
            faults: saga_faults.clone(),
            relay: chronicle_bus::RelayConfig {
                poll_interval: Duration::from_millis(50),
                ..Default::default()
            },
            projector: chronicle_projections::ProjectorConfig::default(),
            gateway,
            http: std::sync::Mutex::new(Some(listener)),
        });
        let saga_wiring = if options.saga_in_its_own_process {
            Arc::new(wiring.another_process(wiring.faults.clone(), None))
        } else {
            wiring.clone()
        };
        let mut tasks = Vec::new();
        for component in components::all() {
            if let Component::Projector(name) = component {
                // Tables first, so a test can query a read model before it has an event.
                chronicle::contexts::read_model(name)
                    .expect("a known projection")
                    .setup(&databases)
                    .await
                    .expect("projection tables");
            }
            // The saga runs apart: tests stop it at fault points and start it again.
            if component == Component::Process(&chronicle::roles::ORDER_SAGA) {
                continue;
            }
            let task = component
                .start(&wiring, shutdown())
                .expect("every component starts");
            tasks.push(tokio::spawn(async move {
                let _ = task.await;
            }));
        }
        let mut app = Self {
            base,
            http: reqwest::Client::new(),
            db,
            pool,
            nats,
            token: String::new(),
            user_id: String::new(),
            saga_faults,
            saga: None,
            saga_wiring,
            stop,
            tasks,
        };
        app.start_saga();
        let (user_id, token) = app.register_and_login("tester").await;
        app.user_id = user_id;
        app.token = token;
        app
    }

    /// The contexts' pools the app's components use (each logged in as its context's role).
    pub fn databases(&self) -> &chronicle_commands::Databases {
        &self.saga_wiring.db
    }

    /// Rebuilds read model `name` from `from` in batches of `batch` events and swaps it in,
    /// as `chronicle replay` does.
    ///
    /// # Panics
    /// When the name is no read model's or the rebuild fails.
    pub async fn replay(
        &self,
        name: &str,
        from: chronicle_projections::ReplayFrom,
        batch: usize,
    ) -> chronicle_projections::ReplayStats {
        self.replay_reporting(name, from, batch).await.0
    }

    /// [`replay`](Self::replay), with the `(done, total)` pairs its progress reported.
    pub async fn replay_reporting(
        &self,
        name: &str,
        from: chronicle_projections::ReplayFrom,
        batch: usize,
    ) -> (chronicle_projections::ReplayStats, Vec<(u64, u64)>) {
        let client = self.nats.client().await;
        let mut reported = Vec::new();
        let stats = chronicle::contexts::read_model(name)
            .expect("a known projection")
            .replay(
                from,
                self.databases(),
                &client,
                batch,
                &mut |done, total| reported.push((done, total)),
            )
            .await
            .unwrap_or_else(|e| panic!("rebuilding {name}: {e}"));
        (stats, reported)
    }

    /// The wiring of another process on the same servers: its own command bus (cache and
    /// group commit) and fault points, the app's settings, and `http` for a gateway.
    fn another_process(&self, http: Option<tokio::net::TcpListener>) -> Wiring {
        self.saga_wiring
            .another_process(chronicle_bus::Faults::default(), http)
    }

    /// Starts another instance of `component` (not the gateway: see
    /// [`spawn_second_gateway`](Self::spawn_second_gateway)) on the same servers, with a
    /// command bus of its own, as another process would run it. It stops with the app.
    pub fn start_another(&mut self, component: Component) {
        let other = self.another_process(None);
        let mut stopped = self.stop.subscribe();
        let task = component
            .start(&other, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .expect("the component starts");
        self.tasks.push(tokio::spawn(async move {
            let _ = task.await;
        }));
    }

    /// Starts a second gateway on the same servers, as another instance (another process:
    /// its own command bus, its own hub) would run: its base URL. It stops with the app.
    pub async fn spawn_second_gateway(&mut self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind port 0");
        let base = format!("http://{}", listener.local_addr().expect("bound address"));
        let second = self.another_process(Some(listener));
        let mut stopped = self.stop.subscribe();
        let task = Component::Gateway
            .start(&second, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .expect("a second gateway starts");
        self.tasks.push(tokio::spawn(async move {
            let _ = task.await;
        }));
        base
    }

    /// Starts the order saga (again, after [`saga_stopped`](Self::saga_stopped)): a new
    /// instance on the same durable consumer, as a restarted process would be.
    pub fn start_saga(&mut self) {
        let mut stopped = self.stop.subscribe();
        let saga = Component::Process(&chronicle::roles::ORDER_SAGA)
            .start(&self.saga_wiring, async move {
                let _ = stopped.wait_for(|s| *s).await;
            })
            .expect("the order saga starts");
        self.saga = Some(tokio::spawn(saga));
    }

    /// Waits for the running saga to stop (at an armed fault point) and returns how it ended.
    ///
    /// # Panics
    /// When no saga runs or it panicked.
    pub async fn saga_stopped(&mut self) -> anyhow::Result<()> {
        self.saga
            .take()
            .expect("a saga is running")
            .await
            .expect("the saga does not panic")
    }

    /// `POST /api/v1/auth/register` for `username` with `password`.
    pub async fn register(&self, username: &str, password: &str) -> reqwest::Response {
        self.http
            .post(self.url("/api/v1/auth/register"))
            .json(&serde_json::json!({"username": username, "password": password, "display_name": username}))
            .send()
            .await
            .expect("the gateway answers")
    }

    /// `POST /api/v1/auth/login` for `username` with `password`.
    pub async fn login(&self, username: &str, password: &str) -> reqwest::Response {
        self.http
            .post(self.url("/api/v1/auth/login"))
            .json(&serde_json::json!({"username": username, "password": password}))
            .send()
            .await
            .expect("the gateway answers")
    }

    /// Registers `username` (password `correct horse`) and logs in: `(user_id, token)`.
    pub async fn register_and_login(&self, username: &str) -> (String, String) {
        let registered = self.register(username, "correct horse").await;
        assert_eq!(
            registered.status(),
            reqwest::StatusCode::CREATED,
            "registering {username}"
        );
        let login: serde_json::Value = self
            .login(username, "correct horse")
            .await
            .json()
            .await
            .expect("a login answer");
        (
            login["user_id"].as_str().expect("a user id").to_owned(),
            login["token"].as_str().expect("a token").to_owned(),
        )
    }

    /// A request with the default user's token.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.url(path))
            .bearer_auth(&self.token)
    }

    /// A request with `token` (another user's, or a tampered one).
    pub fn request_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(token)
    }

    /// Sends a bodyless request with the default user's token.
    pub async fn send(&self, method: reqwest::Method, path: &str) -> reqwest::Response {
        answer(self.request(method, path).send().await)
    }

    /// Sends a bodyless request with no token at all.
    pub async fn send_anonymous(&self, method: reqwest::Method, path: &str) -> reqwest::Response {
        answer(self.http.request(method, self.url(path)).send().await)
    }

    /// Sends a bodyless request with `token`.
    pub async fn send_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::Response {
        answer(self.request_as(token, method, path).send().await)
    }

    /// `GET path` with `token`.
    pub async fn get_as(&self, token: &str, path: &str) -> reqwest::Response {
        self.send_as(token, reqwest::Method::GET, path).await
    }

    /// Sends `body` as JSON with the default user's token.
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        answer(self.request(method, path).json(body).send().await)
    }

    /// Sends `body` as JSON with `token`.
    pub async fn send_json_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        answer(self.request_as(token, method, path).json(body).send().await)
    }

    /// Creates inventory item `sku` over HTTP (as the app's user, staff by default) and
    /// waits until its read model shows it (`?min_version=1`, answered fresh).
    pub async fn create_item(&self, sku: &str, name: &str, price_cents: i64, stock: i64) {
        let r = self
            .post(
                "/api/v1/inventory/items",
                serde_json::json!({"sku": sku, "name": name, "price_cents": price_cents, "initial_stock": stock}),
            )
            .await;
        assert_eq!(r.status(), reqwest::StatusCode::CREATED, "creating {sku}");
        let read = self
            .get(&format!("/api/v1/inventory/items/{sku}?min_version=1"))
            .await;
        assert_eq!(read.headers()["chronicle-consistency"], "fresh");
    }

    /// `POST path` with `body` as JSON and `token`.
    pub async fn post_as(
        &self,
        token: &str,
        path: &str,
        body: &serde_json::Value,
    ) -> reqwest::Response {
        self.send_json_as(token, reqwest::Method::POST, path, body)
            .await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.send(reqwest::Method::GET, path).await
    }

    /// `GET path` with the default user's token, its body read as JSON (any status).
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> T {
        self.get(path).await.json().await.expect("a JSON body")
    }

    /// `field` (`id`, `sku`) of every item of the list at `path`, in the order given,
    /// following `next_cursor` in pages of `limit` as a client written from the contract
    /// does.
    ///
    /// # Panics
    /// When a page is not a page, or a cursor comes back a second time (the client would
    /// loop for ever).
    pub async fn page_through(&self, path: &str, limit: u32, field: &str) -> Vec<String> {
        let join = if path.contains('?') { '&' } else { '?' };
        let mut ids = Vec::new();
        let mut cursors = std::collections::HashSet::new();
        let mut cursor: Option<String> = None;
        loop {
            let page: serde_json::Value = self
                .get_json(&match &cursor {
                    None => format!("{path}{join}limit={limit}"),
                    Some(c) => format!("{path}{join}limit={limit}&cursor={c}"),
                })
                .await;
            let items = page["items"].as_array().expect("a page's items");
            ids.extend(
                items
                    .iter()
                    .map(|i| i[field].as_str().expect("an item's key").to_owned()),
            );
            match page["next_cursor"].as_str() {
                Some(next) => {
                    assert!(
                        cursors.insert(next.to_owned()),
                        "{path}: cursor {next} again"
                    );
                    cursor = Some(next.to_owned());
                }
                None => return ids,
            }
        }
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.send_json(reqwest::Method::POST, path, &body).await
    }

    /// The one value `sql` answers, read from the database behind the API (what a test checks
    /// that the API does not show).
    pub async fn scalar<T>(&self, sql: &str) -> T
    where
        T: Send + Unpin + sqlx::Type<sqlx::Postgres> + for<'r> sqlx::Decode<'r, sqlx::Postgres>,
    {
        sqlx::query_scalar(sql)
            .fetch_one(&self.pool)
            .await
            .expect("the query answers")
    }

    /// Every value `sql` answers, as [`TestApp::scalar`].
    pub async fn scalars<T>(&self, sql: &str) -> Vec<T>
    where
        T: Send + Unpin + sqlx::Type<sqlx::Postgres> + for<'r> sqlx::Decode<'r, sqlx::Postgres>,
    {
        sqlx::query_scalar(sql)
            .fetch_all(&self.pool)
            .await
            .expect("the query answers")
    }

    /// How many events the store holds (the default user's registration included).
    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar(&format!(
            "SELECT count(*) FROM ({}) e",
            every_context("1", "events")
        ))
        .fetch_one(&self.pool)
        .await
        .expect("count events")
    }
}

/// The gateway's answer: a request the gateway does not answer at all fails the test.
fn answer(sent: reqwest::Result<reqwest::Response>) -> reqwest::Response {
    sent.expect("the gateway answers")
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in &self.tasks {
            task.abort();
        }
        if let Some(saga) = &self.saga {
            saga.abort();
        }
    }
}
