//! The steps a scenario against the fake Discord repeats: send an interaction or a message as
//! a user would, wait (never longer than the scenario's deadline) for the bot's answer, and hand
//! back the REST call it made, so that a scenario reads as what it checks.

use std::time::{Duration, Instant};

use serde_json::Value;

use super::fake_discord::{button_interaction, callback_of, command_interaction, is_reply_to, message, select_interaction, slash_search, user, FakeDiscord, Invocation, Recorded, BOT_USER};

/// A fake Discord with a bot pointed at it, and how long any step waits for the bot.
pub struct Scenario {
    pub discord: FakeDiscord,
    wait: Duration,
}

impl Scenario {
    pub fn new(discord: FakeDiscord, wait: Duration) -> Scenario {
        Scenario { discord, wait }
    }

    /// A fresh interaction token, `PREFIX-ID`.
    pub fn token(&self, prefix: &str) -> String {
        format!("{prefix}-{}", self.discord.next_id())
    }

    /// Sends an INTERACTION_CREATE event.
    pub fn interact(&self, interaction: Value) {
        self.discord.dispatch("INTERACTION_CREATE", interaction);
    }

    /// Sends a MESSAGE_CREATE event.
    pub fn say(&self, message: Value) {
        self.discord.dispatch("MESSAGE_CREATE", message);
    }

    /// The application command `name` from `member`, under the token `PREFIX-ID` (ID the
    /// interaction's); returns the token.
    pub fn command(&self, prefix: &str, name: &str, invocation: Invocation, resolved: Value, member: Value) -> String {
        let id = self.discord.next_id();
        let token = format!("{prefix}-{id}");
        self.interact(command_interaction(id, &token, name, invocation, resolved, member));
        token
    }

    /// A `/search` by the shopper with `bytes` hosted on the fake CDN ([`slash_search`]);
    /// returns the token.
    pub fn search(&self, name: &str, bytes: Vec<u8>, content_type: &str, text: Option<&str>, declared_size: Option<usize>) -> String {
        slash_search(&self.discord, name, bytes, content_type, text, declared_size)
    }

    /// A message of the bot's, as a button or a menu under it carries it.
    pub fn bot_message(&self) -> Value {
        message(self.discord.next_id(), user(BOT_USER, "lookalike", true), "", vec![], vec![])
    }

    /// `member` presses the button `custom_id` under a message of the bot's.
    pub fn press(&self, token: &str, custom_id: &str, member: Value) {
        self.interact(button_interaction(self.discord.next_id(), token, custom_id, self.bot_message(), member));
    }

    /// `member` picks `values` in the menu `custom_id` under a message of the bot's.
    pub fn pick(&self, token: &str, custom_id: &str, values: &[&str], member: Value) {
        self.interact(select_interaction(self.discord.next_id(), token, custom_id, values, self.bot_message(), member));
    }

    /// The first REST call of the bot matching `wanted`; fails the test after the deadline.
    pub async fn answer(&self, wanted: impl Fn(&Recorded) -> bool) -> Recorded {
        self.discord.wait_for(self.wait, wanted).await
    }

    /// The bot's callback to the interaction `token` (its first answer: deferred, or the reply).
    pub async fn callback(&self, token: &str) -> Recorded {
        self.answer(callback_of(token)).await
    }

    /// The bot's reply with hits to the interaction `token` (the deferred answer, edited).
    pub async fn reply(&self, token: &str) -> Recorded {
        self.answer(is_reply_to(token)).await
    }

    /// Polls `done` every 20 ms until it holds; fails the test with `failure` after the deadline.
    pub async fn until(&self, failure: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + self.wait;
        while !done() {
            assert!(Instant::now() < deadline, "{failure}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
