"""run_session: the RQ job that turns a queued session into a real run.

queued → running → succeeded | failed | timed_out | canceled. Every change of status goes
through routinely.records.sessions.transition; the outbox's heartbeat (its own thread, beating also
while a clone or setup blocks this one) lets the reaper fail a session whose
worker died.
"""
from __future__ import annotations

import json
from collections import deque
import os
import socket
import time
from typing import Any, Callable

import orjson

from routinely.routines import catalog, prompt
from routinely.firing import chain
from routinely.storage import jobs, keys
from routinely.records import model_usage, session_context, sessions
from routinely.secrets import secret_store
from routinely.secrets.redact import Redactor
from routinely.config import Settings
from routinely.github.github_auth import InstallationTokens, TokenError
from routinely.when import iso
from routinely.storage.store import connect
from workers import agents, process, role_check
from workers.agents.transcript import read_lines
from workers.connector import Connector, ConnectorError, Policy
from workers.credentials import CredentialDoors, open_services
from workers.credentials.session import ServiceError
from workers.outage import Outage
from workers.outbox import Outbox, guarded, patiently
from workers.gateway import WITHHELD, Gateway
from workers.gateway.session import open_gateway
from workers.liveness import Liveness
from routinely.routines.agent_spec import DEFAULT_IDLE_MINUTES
from routinely.routines.prices import PriceError
from routinely.routine_file import Network, Routine
from workers.pushguard import PushError, PushGuard
from workers.sandbox import Sandbox, SandboxError, kill_user
from workers.sandbox.bounds import limits_for
from workers.warm import WarmStart
from workers.workspace import Workspace

class Runtime:
    """What a worker process keeps between sessions: settings, Redis, the token cache, and
    whether the worker is shutting down (`stop_at`: when running sessions must end)."""

    _current: "Runtime | None" = None

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.conn = connect(settings)
        self.tokens = InstallationTokens(settings)
        self.outage = Outage("worker", settings.redis_url)
        self.stop_at: float | None = None  # time.monotonic() deadline, set on SIGTERM

    def shut_down(self) -> bool:
        return self.stop_at is not None and time.monotonic() >= self.stop_at

    @classmethod
    def get(cls) -> "Runtime":
        if cls._current is None:
            cls._current = cls(Settings.from_env())
        return cls._current


def run_session(session_id: str | None = None) -> str:
    """RQ entry point; the job id is the session id. Returns the final status."""
    if session_id is None:
        session_id = jobs.current_id()
    return SessionRun(Runtime.get(), session_id).run()


class Ended(Exception):
    """Ends a session at the step that raises it: `outcome` is (status, exit code, the line saying
    why). Each step of SessionRun._execute either returns what the next one needs or raises this."""

    def __init__(self, status: str, code: int | None = None, reason: str | None = None) -> None:
        super().__init__(reason or status)
        self.outcome = (status, code, reason)


class Failed(Ended):
    """Ends a session as failed; str() is the one line for its log."""

    def __init__(self, reason: str) -> None:
        super().__init__("failed", None, reason)


class SessionRun:
    def __init__(self, rt: Runtime, session_id: str) -> None:
        self.rt, self.conn, self.settings, self.id = rt, rt.conn, rt.settings, session_id
        self.outbox = Outbox(rt.conn, session_id, rt.outage, rt.settings.clock,  # rides through Redis outages
                             rt.settings.log_max_bytes)
        self.stopped_by_shutdown = False
        self.forwarded: list[str] = []  # "REF to OWNER/REPO" its push door forwarded: done outside (issue #29)

    # -- log and state
    def log(self, *lines: str) -> None:
        self.outbox.log(*lines)

    def _patiently(self, call: Callable[[], Any]) -> Any:
        """A Redis call the session cannot go on without (a read before its agent starts, a
        record after): waits out an outage instead of failing the session."""
        return patiently(call, self.rt.outage, self.conn)

    def canceled(self) -> bool:
        if self.rt.shut_down():
            self.stopped_by_shutdown = True
            return True
        return bool(guarded(lambda: self.conn.exists(keys.session_cancel(self.id)), self.rt.outage, 0))

    # -- the run
    def run(self) -> str:
        session = sessions.load(self.conn, self.id)
        if session is None:
            return "missing"
        started = sessions.transition(self.conn, self.id, ["queued"], status="running", started_at=iso(self.settings.clock()),
                                      host=socket.gethostname(), pid=os.getpid())
        if not started:
            return session.status or "missing"  # canceled before it started (no status: not a record start.lua made)
        self.outbox.start()
        self.workspace: Workspace | None = None
        self.guard: PushGuard | None = None
        self.sandbox: Sandbox | None = None
        self.warm: WarmStart | None = None
        self.connector: Connector | None = None
        self.gateway: Gateway | None = None
        self.services: CredentialDoors | None = None
        self.secrets: dict[str, str] = {}  # the routine's stored secrets, by name: never logged as they are
        self.liveness = Liveness(DEFAULT_IDLE_MINUTES, self.canceled)
        try:
            status, code, reason = self._execute(session)
        except Exception as exc:  # a bug or a lost store must not leave the session running
            status, code, reason = "failed", None, f"routinely: internal error: {type(exc).__name__}: {exc}"
        # pushes are forwarded and the workspace gone before the session reads as finished
        try:
            self._cleanup()
        except Exception as exc:  # the outcome stands: the reaper's host cleanup takes what is left
            self.log(f"routinely: cleaning up after the session failed: {type(exc).__name__}: {exc}")
        if status == "failed" and self.stopped_by_shutdown:  # queued again, or failed with what it did outside
            status, reason = self._patiently(lambda: sessions.after_shutdown(self.conn, self.id, self.forwarded))
            code = None
        if reason:  # the service's line, never one an agent could have printed
            self.log(reason if reason.startswith("routinely:") else f"routinely: {reason}")
        if status == "queued":  # the worker puts its job back on the queue (workers.worker)
            self.outbox.finish(status, **sessions.REQUEUED)
            return status
        self.outbox.finish(status, finished_at=iso(self.settings.clock()), exit_code=code,
                           reason=reason if status != "succeeded" else None)
        return status

    def _cleanup(self) -> None:
        """Close what _execute's steps opened. Not the reverse of their order (so no ExitStack):
        the doors' tokens die first (401 from here on), then the sandbox ends every process of
        the session, and only then may the gateway, the push door, the warm-start overlay and
        the workspace go, though the sandbox was opened before them."""
        try:
            if self.connector is not None:
                self.connector.close()  # its token answers 401 from here on
            if self.services is not None:
                self.services.close()
            if self.sandbox is not None:
                self.sandbox.close()  # no process of the session outlives it
                if self.sandbox.resources() is not None:
                    self.outbox.update(resources=orjson.dumps(self.sandbox.resources()).decode())
            if self.gateway is not None:
                self.gateway.close()
            if self.guard is not None:
                self.guard.close()
            if self.warm is not None:
                self.warm.close()  # unmounts a cached setup before the workspace goes
        finally:
            if self.workspace is not None and not self.settings.keep_workspaces:
                self.workspace.remove()

    def _execute(self, session: sessions.Session) -> tuple[str, int | None, str | None]:
        """The session's steps, in order; returns (status, exit code, the line saying why when not
        a plain exit). A step that ends the session raises Ended; what the steps open, _cleanup
        closes (in an order of its own: see there)."""
        try:
            routine, cat = self._admit(session)
            deadline, began = time.monotonic() + routine.timeout_minutes * 60, time.monotonic()
            workspace = self._walls(routine)
            self._checkout_through_the_push_door(workspace, routine, session.chain_depth, deadline)
            payload = self._payload(session)
            github, paragraph, doors_env = self._doors(routine, cat)
            env, text, launch = self._agent_ready(workspace, routine, cat, session.trigger, payload, github, paragraph,
                                                  doors_env)
            self.log(f"routinely: workspace ready in {time.monotonic() - began:.2f} s")
            self._setup(workspace, routine, env, deadline)
            return self._agent(workspace, env, text, launch, deadline)
        except Ended as exc:
            return exc.outcome

    def _admit(self, session: sessions.Session) -> tuple[Routine, catalog.Catalog]:
        """Its routine (still applied), its sender's role, its secrets: before any sandbox or
        workspace exists, so a stranger's delivery stays cheap."""
        cat = self._patiently(lambda: catalog.load(self.conn))
        routine = cat.routines.get(session.routine_key) if session.routine_key else None
        if routine is None:
            raise Failed("routinely: the routine was removed before this session started")
        self.log(f"routinely: session {self.id} of {routine.key} ({session.trigger.get('kind')}) on {socket.gethostname()}")
        refused = role_check.check(self.rt, self.id, session, routine, cat.accounts.get(routine.account), self.log)
        if refused is not None:
            raise Ended(*refused)
        try:
            self.secrets = self._patiently(lambda: secret_store.for_session(self.settings, self.conn, routine.secrets,
                                                                            routine.key, routine.account))
        except secret_store.SecretError as exc:
            raise Failed(f"routinely: {exc}") from None
        self.outbox.redact = Redactor(self.secrets)  # from here on no line, transcript entry or action holds a value
        return routine, cat

    def _walls(self, routine: Routine) -> Workspace:
        """The sandbox (fail closed: never more access than asked) and the workspace inside it."""
        try:
            self.sandbox = Sandbox.open(routine.environment, self.id, self.settings.session_users, self.log,
                                        self.settings.sandbox, self.settings.sandbox_paths,
                                        limits_for(routine.environment, self.settings.session_limits),
                                        self.settings.cgroups)
            self.outbox.update(sandbox="on" if self.sandbox.enabled else "off")
        except SandboxError as exc:
            raise Failed(str(exc)) from None
        try:
            self.workspace = Workspace.create(self.settings.data_dir, self.id, self.sandbox.ids)
        except PermissionError as exc:
            raise Failed(f"routinely: {exc}") from None
        return self.workspace

    def _checkout_through_the_push_door(self, workspace: Workspace, routine: Routine, depth: int,
                                        deadline: float) -> None:
        """The push door (every push the session makes goes through it) and the checkouts whose
        remotes point at it; a push it forwards starts sessions one chain deeper (`depth`)."""
        bounds = self.sandbox.bounds
        self.guard = PushGuard(workspace.relays, routine.branch_prefix, routine.allow_unrestricted_branch_pushes,
                               lambda line: self.log(line), sock=str(self.sandbox.door_dir / "push.sock"),
                               allow_tags=routine.allow_tag_pushes, secrets=self.secrets,
                               join=bounds.join if bounds else (), rlimits=bounds.rlimits if bounds else (),
                               max_input_bytes=bounds.limits.disk_mb * 1024 * 1024 if bounds else None,
                               on_forward=lambda repo, ref: (self.forwarded.append(f"{ref} to {repo}"),
                                                             self._patiently(lambda: chain.record(self.conn, repo, ref, self.id, depth))))
        push_port = self.sandbox.add_door("push", self.guard.sock)
        self._checkout(workspace, self.guard, routine, lambda repo: self.guard.url(repo, push_port), deadline)
        self._share(workspace)

    def _doors(self, routine: Routine, cat: catalog.Catalog) -> tuple[dict[str, Any], str, dict[str, str]]:
        """The model gateway, the github connector and the credential doors; their tokens join
        what is redacted. Returns the connector's .mcp.json entry, its prompt paragraph, and the
        doors' variables for the agent."""
        self.liveness.idle_seconds = routine.idle_timeout_minutes * 60
        try:
            self.gateway, gateway_env = open_gateway(self.settings, self.conn, self.sandbox, self.id, routine.key,
                                                     routine.account, cat.accounts[routine.account].timezone,
                                                     routine.budget.model_dump(), self.log)
        except PriceError as exc:
            raise Failed(f"routinely: {exc}") from None
        self.liveness.gateway = self.gateway
        try:
            github, paragraph = self._github_connector(routine)
        except ConnectorError as exc:
            raise Failed(str(exc)) from None
        try:  # before the agent's environment: NO_PROXY lists these doors too
            self.services, service_env = open_services(self.settings, self.sandbox, routine.services, self.secrets,
                                                       self.log, self.id)
        except ServiceError as exc:
            raise Failed(str(exc)) from None
        tokens = {"session gateway token": self.gateway.token, "session github token": self.connector.token}
        self.outbox.redact = self.outbox.redact.with_(tokens)
        self.connector.record.redact = self.outbox.redact
        self.guard.secrets.update(tokens)
        return github, paragraph, {**gateway_env, **service_env}

    def _agent_ready(self, workspace: Workspace, routine: Routine, cat: catalog.Catalog, trigger: dict[str, Any],
                     payload: bytes | None, github: dict[str, Any], paragraph: str,
                     doors_env: dict[str, str]) -> tuple[dict[str, str], str, agents.Launch]:
        """The agent's environment, prompt and .mcp.json, and how it is launched."""
        env = self._agent_env(workspace, routine, trigger, payload)  # after the doors: NO_PROXY lists them
        text = prompt.build(routine.prompt, trigger, orjson.loads(payload) if payload else None, paragraph)
        workspace.write(".routinely/prompt.md", text)
        self.outbox.update(**{session_context.PROMPT_FIELD: session_context.bounded(text)})  # shown on its page
        env.update(doors_env)  # in a session the vendors' names point at its gateway
        env.update({name: self.secrets[name] for name in routine.secrets_as_env})
        if routine.secrets_as_env:  # its page says so
            self.outbox.update(secrets_in_env=",".join(routine.secrets_as_env))
        connectors = {name: server.entry() for name, server in cat.connectors.items()}
        mcp = workspace.write_mcp(connectors, routine.connectors, os.environ, builtin={"github": github})
        try:
            launch = agents.prepare(routine.agent, self.settings.agent, workspace,
                                    json.loads(mcp.read_text())["mcpServers"], env, as_root=self._agent_is_root())
        except agents.AgentError as exc:
            raise Failed(str(exc)) from None
        env.update(launch.env)
        ids = self.sandbox.ids
        if self.sandbox.enabled or ids:
            self.log(f"routinely: sandbox {'on' if self.sandbox.enabled else 'off'}, network {self.sandbox.network}"
                     + (f", session user {ids[0]}" if ids else ""))
        return env, text, launch

    def _setup(self, workspace: Workspace, routine: Routine, env: dict[str, str], deadline: float) -> None:
        """Warm start: setup, or maintenance on a cached setup; a setup that exited 0 is cached."""
        before, setup_began = self.warm.command(), time.monotonic()
        if before:
            self.log(f"routinely: running {before[0]}")
            setup_env = {**env, **{name: self.secrets[name] for name in routine.environment.setup_secrets}}  # setup only
            result = self._command(["bash", "-c", before[1]], workspace, setup_env, "", deadline)
            if result.outcome != "exited" or result.exit_code != 0:
                raise Ended(*self._ended(result, before[0]))
        ids = self.sandbox.ids
        self.warm.after_setup(lambda: ids and kill_user(ids[0]), time.monotonic() - setup_began,
                              withheld=routine.environment.setup_secrets)
        self.outbox.update(warm_start=self.warm.summary())

    def _agent(self, workspace: Workspace, env: dict[str, str], text: str, launch: agents.Launch,
               deadline: float) -> tuple[str, int | None, str | None]:
        """The agent, to its end; then what its end means (its budget, its model API, its exit)."""
        self.log(f"routinely: starting the agent in {launch.cwd.name}: {launch.label}")
        self.api_error: str | None = None
        result = self._command(launch.argv, workspace, env, text, deadline, launch.cwd, self._agent_output(launch))
        if self.gateway.stop_reason == "budget_exceeded":
            spent = self.gateway.meter.total
            self.log(f"routinely: budget_exceeded: spent {spent['input_tokens'] + spent['output_tokens']} input+output tokens, "
                     f"cost {spent['cost_usd'] if spent['cost_usd'] is not None else 'unknown'} USD")
            self._patiently(lambda: model_usage.record_stop(self.conn, self.gateway.meter.routine_key, "budget_exceeded"))
            return "failed", result.exit_code, "budget_exceeded"
        if self.api_error and result.outcome == "exited":
            policy = self.sandbox.network
            blocked = f"the routine's network policy ({policy}) blocks it" if policy != Network.FULL else self.api_error
            return "failed", result.exit_code, f"routinely: the agent could not reach its model API: {blocked}"
        return self._ended(result, "agent")

    def _agent_is_root(self) -> bool:
        return self.sandbox.uid is None and os.geteuid() == 0

    def _agent_output(self, launch: agents.Launch):
        """The agent's lines: its structured events become transcript entries and readable
        log lines; anything else goes to the log as it is."""
        def on_lines(lines: list[str]) -> None:
            self.liveness.output()
            reading = read_lines(launch.transcript, lines)
            # through the outbox, like every write of a running session: Redis may be away
            if reading.entries:
                self.outbox.transcript(reading.entries)
            if reading.log:
                self.outbox.log(*reading.log)
            if reading.agent_usage is not None:
                self.outbox.update(agent_usage=orjson.dumps(reading.agent_usage).decode())
            self.api_error = self.api_error or reading.api_error
        return on_lines

    def _github_connector(self, routine: Routine) -> tuple[dict[str, Any], str]:
        """Serve the session's github connector as a door; its .mcp.json entry and prompt paragraph."""
        policy = Policy.of(routine)
        self.connector = Connector(self.id, policy, str(self.sandbox.door_dir / "github.sock"), self.conn, self.settings,
                                   self.rt.tokens, self.guard.pushed_branch, self.log)
        self.connector.start()
        port = self.sandbox.add_door("github", self.connector.socket_path)
        return self.connector.mcp_entry(port), policy.prompt(self.settings.github_app)

    def _ended(self, result: process.Result, what: str) -> tuple[str, int | None, str | None]:
        code = result.exit_code
        if notes := self.sandbox.notes():
            self.log(*notes)
        if limit := self.sandbox.ended():
            return "failed", code, limit  # out of memory, disk limit exceeded
        if result.outcome == "canceled" and self.liveness.reason == "stalled":
            self.log(self.liveness.stalled_line())
            if self.gateway is not None:
                self._patiently(lambda: model_usage.record_stop(self.conn, self.gateway.meter.routine_key, "stalled"))
            return "timed_out", None, "stalled"
        if result.outcome == "timed_out":
            return "timed_out", None, f"routinely: the {what} ran past timeout_minutes and was stopped"
        if result.outcome == "canceled" and self.stopped_by_shutdown:
            self.log(f"routinely: worker shut down; the {what} was stopped after the shutdown grace period")
            return "failed", None, "worker shut down"
        if result.outcome == "canceled":
            return "canceled", None, "routinely: canceled while running"
        if what in ("setup", "maintenance"):
            return "failed", code, f"routinely: {what} exited with code {code}; the agent was not started"
        if code == 127:
            return "failed", code, "routinely: the agent command was not found (exit 127): set ROUTINELY_AGENT to an installed command"
        self.log(f"routinely: the agent exited with code {code}")
        return ("succeeded" if code == 0 else "failed"), code, None if code == 0 else f"the agent exited with code {code}"

    def _command(self, argv: list[str], ws: Workspace, env: dict[str, str], stdin: str, deadline: float,
                 cwd: "os.PathLike[str] | None" = None, on_lines=None) -> process.Result:
        def plain(lines: list[str]) -> None:
            self.liveness.output()
            self.log(*lines)
        cmd = self.sandbox.command(argv, env, cwd or ws.root, ws.home)
        return process.run(cmd.argv, cmd.cwd, cmd.env, stdin, deadline, on_lines or plain,
                           lambda: self.liveness.should_stop() or self.sandbox.over(), user=cmd.user,
                           pass_fds=cmd.pass_fds, join=cmd.join, rlimits=cmd.rlimits,
                           started=lambda pid: self._started(pid, cmd.user))

    def _started(self, pid: int, uid: int | None) -> None:
        """What the reaper needs to finish a session whose worker died: its sandbox's pid, uid, cgroup."""
        bounds = self.sandbox.bounds
        self.outbox.update(sandbox_pid=pid, sandbox_uid=uid,
                           sandbox_cgroup=bounds.name if bounds is not None and bounds.cgroup is not None else None)

    def _share(self, ws: Workspace) -> None:
        """What the sandbox mounts of the host: the workspace (its checkouts hold their objects,
        hard-linked from the host's mirrors). Nothing a checkout names is mounted: a cached
        checkout's `objects/info/alternates` is what an earlier session wrote. Relays are the
        worker's: sessions reach them by their push door."""
        self.sandbox.share(ws.root, writable=True)
        self.sandbox.watch(ws.root, ws.relays)  # what it pushes lands in its relay: the session's disk too

    def _sandboxed(self, ws: Workspace, deadline: float) -> Callable[[list[str], "os.PathLike[str]"], tuple[int, str]]:
        """Runs a short command (git) in the session's sandbox as the session, for the worker's
        steps in folders a session wrote; returns its exit code and output."""
        def run(argv: list[str], cwd: "os.PathLike[str]") -> tuple[int, str]:
            self._share(ws)
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(ws.home), "LANG": "C.UTF-8",
                   "GIT_TERMINAL_PROMPT": "0"}
            lines: deque[str] = deque(maxlen=20)  # git's last words, for the one line that says why
            cmd = self.sandbox.command(argv, env, cwd, ws.home)
            result = process.run(cmd.argv, cmd.cwd, cmd.env, "", deadline, lines.extend, self.canceled,
                                 user=cmd.user, pass_fds=cmd.pass_fds, join=cmd.join, rlimits=cmd.rlimits)
            code = result.exit_code if result.outcome == "exited" and result.exit_code is not None else -1
            return code, "\n".join(lines)
        return run

    def _checkout(self, ws: Workspace, guard: PushGuard, routine: Routine,
                  origin: Callable[[str], str], deadline: float) -> None:
        """Mirrors, relays, then checkouts or a cached setup (workers/warm)."""
        token_for = lambda repo: lambda: self._patiently(lambda: self.rt.tokens.for_repository(self.conn, repo))  # noqa: E731
        # the warm start keys its cache on the environment as stored (the file's shape, JSON types)
        self.warm = WarmStart(self.settings, self.id, routine.key, routine.environment.to_file(), ws, guard, token_for, self.log,
                              origin, self._sandboxed(ws, deadline))
        try:
            self.warm.prepare(routine.repositories)
        except (TokenError, PushError) as exc:
            raise Failed(f"routinely: {exc}") from None
        if self.warm.notes:
            self.outbox.update(warm_start=self.warm.summary())

    def _payload(self, session: sessions.Session) -> bytes | None:
        event_id = session.event_id
        return self._patiently(lambda: self.conn.get(keys.payload(event_id))) if event_id else None

    def _agent_env(self, ws: Workspace, routine: Routine, trigger: dict[str, Any], payload: bytes | None) -> dict[str, str]:
        """Only what the contract lists: basics, the routine's env, ROUTINELY_*, and the
        service variables named in ROUTINELY_AGENT_ENV — nothing else of the worker's."""
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            # always the session's own: no session reads or writes another's agent state
            "HOME": str(ws.home),
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "TMPDIR": str(ws.root / ".tmp"),
        }
        env.update(self.sandbox.extra_env)  # the routine's env may override (e.g. ALL_PROXY: "" for SOCKS-less clients)
        env.update(routine.environment.env)
        withheld = [name for name in self.settings.agent_env if name in WITHHELD]
        if withheld:
            self.log(f"routinely: withheld from the session: {', '.join(withheld)} (model credentials and base URLs "
                     "stay with the model gateway)")
        for name in self.settings.agent_env:
            if name in os.environ and name not in WITHHELD:
                env[name] = os.environ[name]
        env.update({
            "ROUTINELY_SESSION_ID": self.id,
            "ROUTINELY_ROUTINE": routine.name,
            "ROUTINELY_TRIGGER": trigger.get("kind", ""),
            "ROUTINELY_PROMPT_FILE": str(ws.root / ".routinely" / "prompt.md"),
            "ROUTINELY_REPOS": " ".join(str(p) for p in ws.repos),
        })
        if trigger.get("kind") == "github" and payload:
            env["ROUTINELY_EVENT_FILE"] = str(ws.write(".routinely/event.json", payload))
        if trigger.get("text") is not None:
            env["ROUTINELY_TEXT"] = trigger["text"]
        if trigger.get("kind") == "schedule":
            env["ROUTINELY_PREVIOUS_RUN_AT"] = trigger.get("previous_run_at") or ""
        return env
