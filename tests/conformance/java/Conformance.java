/*
 * An outside check of the Bamboo wire contract (PROTOCOL.md, version 1), written from
 * that page alone, with nothing but the JDK: java.net.http's HttpClient and WebSocket,
 * and a JSON and a MessagePack reader and writer of its own.
 *
 *   javac -d OUT Conformance.java && java -cp OUT Conformance MODE BASE_URL
 *
 * MODE open: a server without auth, started with --hello-timeout 2 --ping-interval 1
 * --default-ttl 600 --max-session-bytes 2097152 (the waits, the TTL and the cap it
 * checks; TTL_SECONDS in the environment overrides 600).
 * MODE auth: a server started with --auth-secret $SECRET --rate-limit 10
 * --rate-limit-burst 10 --rate-limit-refusals 5 --max-sessions 4 (SECRET in the
 * environment).
 * MODE restart1, then the server stopped (SIGTERM) and started again on its data
 * directory, then MODE restart2: CONFORMANCE_STATE names a file for what the first
 * tells the second; restart1 prints READY when the server may be stopped.
 *
 * It prints one line per check, HELD or FAIL, NOTE lines for what the contract leaves
 * open, STACK lines (the whole stack) after a section ended by an exception no check
 * foresaw, then "N held, M failed", and exits 1 when a check failed.
 */

import java.io.ByteArrayOutputStream;
import java.io.PrintWriter;
import java.io.StringWriter;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.net.http.WebSocket;
import java.net.http.WebSocketHandshakeException;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.time.Instant;
import java.time.OffsetDateTime;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Base64;
import java.util.HashSet;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.Set;
import java.util.concurrent.BlockingQueue;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.CopyOnWriteArrayList;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.LinkedBlockingQueue;
import java.util.concurrent.ThreadLocalRandom;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.Predicate;
import java.util.regex.Pattern;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

public final class Conformance {
    /** How long any one expected thing may take: generous, for a loaded machine. */
    static final long WAIT_MS = 10_000;

    static final String JSON = "bamboo.v1";
    static final String MSGPACK = "bamboo.v1.msgpack";
    static final Pattern SESSION_ID = Pattern.compile("[A-Za-z0-9_.-]{1,128}");
    static final Pattern RFC3339_UTC = Pattern.compile(
            "\\d{4}-\\d{2}-\\d{2}[Tt]\\d{2}:\\d{2}:\\d{2}(\\.\\d+)?([Zz]|\\+00:00)");
    static final List<String> ERROR_CODES = List.of("bad_request", "unauthorized", "forbidden",
            "not_found", "too_large", "rate_limited", "conflict", "closed", "internal");

    static String httpBase;
    static String wsBase;
    static String runPrefix;
    static HttpClient http;
    static int heldCount;
    static int failedCount;
    static final List<Peer> opened = new ArrayList<>();
    /** Connections whose first frame was not their welcome. */
    static final List<String> welcomesNotFirst = new CopyOnWriteArrayList<>();

    public static void main(String[] args) throws Exception {
        if (args.length != 2 || !Set.of("open", "auth", "restart1", "restart2").contains(args[0])) {
            System.err.println(
                    "usage: java Conformance open|auth|restart1|restart2 http://HOST:PORT");
            System.exit(2);
        }
        httpBase = args[1].replaceAll("/+$", "");
        wsBase = httpBase.replaceFirst("^http", "ws");
        http = HttpClient.newBuilder().version(HttpClient.Version.HTTP_1_1)
                .connectTimeout(Duration.ofSeconds(10)).build();
        runPrefix = "j" + Long.toHexString(ThreadLocalRandom.current().nextLong() >>> 20);
        switch (args[0]) {
            case "open" -> openMode();
            case "auth" -> authMode(System.getenv("SECRET"));
            case "restart1" -> beforeRestart(Path.of(System.getenv("CONFORMANCE_STATE")));
            default -> afterRestart(Path.of(System.getenv("CONFORMANCE_STATE")));
        }
        System.out.println(heldCount + " held, " + failedCount + " failed");
        System.exit(failedCount == 0 ? 0 : 1);
    }

    // ---------------------------------------------------------------- open mode

    static void openMode() throws Exception {
        // Started first, checked last: the hello deadline and the server's keepalive
        // pings take their time while the other checks run.
        Peer silent = Peer.open(streamPath(sid("silent")));
        Peer keepalive = Peer.open(streamPath(sid("keepalive")));
        keepalive.hello(obj("create", true));
        opened.removeAll(List.of(silent, keepalive));  // not the sections' to close
        section("transport", Conformance::transport);
        section("subprotocols", Conformance::subprotocols);
        section("handshake", Conformance::handshake);
        section("presence", Conformance::presence);
        section("activity", Conformance::activity);
        section("hello refusals", Conformance::helloRefusals);
        section("publishing", Conformance::publishing);
        section("idempotency keys", Conformance::idempotencyKeys);
        section("event types", Conformance::eventTypes);
        section("message frames", Conformance::messageFrames);
        section("history", Conformance::history);
        section("events reads", Conformance::eventsReads);
        section("read defaults", Conformance::readDefaults);
        section("drop and resume", Conformance::dropAndResume);
        section("resume variants", Conformance::resumeVariants);
        section("resume while publishing", Conformance::resumeWhilePublishing);
        section("replay uninterrupted", Conformance::replayUninterrupted);
        section("ping", Conformance::pingFrames);
        section("state", Conformance::stateChanges);
        section("state closed", Conformance::stateClosed);
        section("error frames", Conformance::errorFrames);
        section("large and fragmented", Conformance::largeAndFragmented);
        section("frame limit", Conformance::frameLimit);
        section("JDK fragments", Conformance::jdkFragments);
        section("session byte cap", Conformance::sessionByteCap);
        section("odd payloads", Conformance::oddPayloads);
        section("shared keys", Conformance::sharedKeys);
        section("concurrent create", Conformance::concurrentCreate);
        section("messagepack widths", Conformance::packedWidths);
        section("text and binary", Conformance::textAndBinary);
        section("messagepack", Conformance::messagePack);
        section("websocket ping and pong", Conformance::webSocketPingPong);
        section("close handshake", Conformance::closeHandshake);
        section("http", Conformance::httpEndpoints);
        section("welcome first", () -> check("on every connection the welcome was the first frame",
                welcomesNotFirst.isEmpty(), welcomesNotFirst));
        section("hello deadline", () -> {
            Closed closed = silent.awaitClose(WAIT_MS + 5_000);
            check("a connection that sends no hello is closed 4408", closed.code == 4408, closed);
        });
        section("server keepalive", () -> {
            long deadline = System.currentTimeMillis() + WAIT_MS;
            while (keepalive.pings.isEmpty() && System.currentTimeMillis() < deadline) {
                Thread.sleep(10);
            }
            check("the server pinged an idle connection (--ping-interval 1) and the JDK's "
                    + "automatic pongs kept it open", !keepalive.pings.isEmpty(), "no ping seen");
            check("that connection still answers a ping frame",
                    "pong".equals(type(keepalive.call(obj("type", "ping")))), "");
        });
    }

    static void transport() throws Exception {
        for (String bad : List.of("bad%20id", "..", ".", "%2E%2E", "x".repeat(129), "a%2Fb",
                "caf%C3%A9", "semi;colon", "star*")) {
            Integer status = refusedStatus(streamPath(bad), Map.of());
            check("session id '" + bad + "' is refused with HTTP 400 before the upgrade",
                    Objects.equals(status, 400), "got " + (status == null ? "an upgrade" : status));
        }
        for (String id : List.of(runPrefix + "A-z_0.9", "...",
                runPrefix + "x".repeat(128 - runPrefix.length()))) {
            Peer peer = Peer.open(streamPath(id));
            Map<String, Object> session = map(peer.hello(obj("create", true)).get("session"));
            check("session id '" + abbreviate(id) + "' is accepted and created",
                    id.equals(session.get("id")), session.get("id"));
            peer.close();
        }
        for (String bad : List.of("/api/v1/stream/", "/api/v1/stream/a/b")) {
            Integer status = refusedStatus(bad, Map.of());
            check("the path " + bad + " (no id, or not one) is refused with HTTP 400",
                    Objects.equals(status, 400), "got " + (status == null ? "an upgrade" : status));
        }
        Peer queried = Peer.open(streamPath(sid("query")) + "?client=java");
        Map<String, Object> queriedSession = map(queried.hello(obj("create", true)).get("session"));
        check("a query string after the session id is not part of the id",
                sid("query").equals(queriedSession.get("id")), queriedSession.get("id"));
        queried.close();
        Integer encoded = refusedStatus(streamPath("%61bc"), Map.of());
        note("an id percent-encoded as %61bc: " + (encoded == null ? "upgraded" : "HTTP "
                + encoded));
        Set<Object> ids = new HashSet<>();
        for (int i = 0; i < 2; i++) {
            Peer fresh = Peer.open("/api/v1/stream");
            Map<String, Object> welcome = fresh.hello(obj("user_id", "u-new"));
            Map<String, Object> session = map(welcome.get("session"));
            ids.add(session.get("id"));
            check("/api/v1/stream creates a session whose id the server picked and matches "
                    + "the id pattern", session.get("id") instanceof String s
                    && SESSION_ID.matcher(s).matches() && !s.equals(".") && !s.equals(".."),
                    session.get("id"));
            check("the new session is fresh: resumed false, last_seq 0, user_id applied",
                    Boolean.FALSE.equals(welcome.get("resumed"))
                    && num(welcome.get("last_seq")) == 0
                    && "u-new".equals(session.get("user_id")), welcome);
            fresh.close();
        }
        check("two attaches to /api/v1/stream get two sessions", ids.size() == 2, ids);
        Integer unknownPath = refusedStatus("/api/v1/nowhere", Map.of());
        note("an upgrade on an unknown path /api/v1/nowhere: "
                + (unknownPath == null ? "upgraded" : "HTTP " + unknownPath));
    }

    static void subprotocols() throws Exception {
        String id = sid("subprotocols");
        Peer json = Peer.open(streamPath(id), JSON);
        check("offering bamboo.v1 selects bamboo.v1", JSON.equals(json.ws.getSubprotocol()),
                json.ws.getSubprotocol());
        json.hello(obj("create", true));
        json.call(obj("type", "ping"));
        check("bamboo.v1 frames are text frames", json.binaryMessages.get() == 0
                && json.textMessages.get() >= 2, json.frameCounts());
        Peer packed = Peer.open(streamPath(id), MSGPACK);
        check("offering bamboo.v1.msgpack selects it", MSGPACK.equals(packed.ws.getSubprotocol()),
                packed.ws.getSubprotocol());
        packed.hello(obj());
        packed.call(obj("type", "ping"));
        check("bamboo.v1.msgpack frames are binary frames", packed.textMessages.get() == 0
                && packed.binaryMessages.get() >= 2, packed.frameCounts());
        Peer none = Peer.open(streamPath(id));
        check("offering no subprotocol selects none", none.ws.getSubprotocol().isEmpty(),
                none.ws.getSubprotocol());
        none.hello(obj());
        check("offering no subprotocol gets JSON in text frames", none.binaryMessages.get() == 0
                && none.textMessages.get() >= 1, none.frameCounts());
        Peer both = Peer.open(streamPath(id), MSGPACK, JSON);
        String chosen = both.ws.getSubprotocol();
        check("offering both selects one of them", chosen.equals(JSON) || chosen.equals(MSGPACK),
                chosen);
        note("offered bamboo.v1.msgpack first, then bamboo.v1: the server selected " + chosen);
        both.hello(obj());
        try {
            Peer unknown = Peer.open(streamPath(id), "chat.v9");
            unknown.hello(obj());
            note("offering only an unknown subprotocol: upgraded with '"
                    + unknown.ws.getSubprotocol() + "' and spoken to in "
                    + (unknown.binaryMessages.get() > 0 ? "binary" : "text") + " frames");
        } catch (Refused refused) {
            note("offering only an unknown subprotocol: refused with HTTP " + refused.status);
        }
        closeAll();
    }

    static void handshake() throws Exception {
        String id = sid("meta");
        Peer first = Peer.open(streamPath(id));
        Map<String, Object> welcome = first.hello(obj("create", true, "user_id", "u1",
                "title", "My chat", "role", "client", "x_unknown_field", List.of(1, 2)));
        check("an unknown field in hello is ignored", "welcome".equals(type(welcome)), welcome);
        check("welcome.connection_id is a string", welcome.get("connection_id") instanceof String,
                welcome.get("connection_id"));
        if (!(welcome.get("connection_id") instanceof String c && c.startsWith("c_"))) {
            note("welcome.connection_id does not start with c_ as PROTOCOL.md shows: "
                    + welcome.get("connection_id"));
        }
        check("welcome.epoch is a non-empty string", welcome.get("epoch") instanceof String e
                && !e.isEmpty(), welcome.get("epoch"));
        check("welcome.last_seq is the integer 0 on a new session",
                Long.valueOf(0).equals(welcome.get("last_seq")), welcome.get("last_seq"));
        check("welcome.resumed is the boolean false without last_seq",
                Boolean.FALSE.equals(welcome.get("resumed")), welcome.get("resumed"));
        check("welcome.replay is the integer 0 without last_seq",
                Long.valueOf(0).equals(welcome.get("replay")), welcome.get("replay"));
        Map<String, Object> session = map(welcome.get("session"));
        checkSessionMetadata(session, id, "welcome.session");
        check("welcome.session: user_id and title from hello, state active, 0 messages, "
                + "1 connection", "u1".equals(session.get("user_id"))
                && "My chat".equals(session.get("title")) && "active".equals(session.get("state"))
                && num(session.get("message_count")) == 0 && num(session.get("connections")) == 1,
                session);
        check("welcome.session.epoch and last_seq match welcome's",
                Objects.equals(session.get("epoch"), welcome.get("epoch"))
                && Objects.equals(session.get("last_seq"), welcome.get("last_seq")), session);
        checkExpiry(session);

        Peer second = Peer.open(streamPath(id));
        Map<String, Object> again = map(second.hello(obj("create", true, "user_id", "u2",
                "title", "Another title")).get("session"));
        check("create on an existing session attaches to it (get-or-create), user_id and "
                + "title unchanged", "u1".equals(again.get("user_id"))
                && "My chat".equals(again.get("title"))
                && Objects.equals(again.get("created_at"), session.get("created_at")), again);
        check("SessionMetadata.connections counts both connections",
                num(again.get("connections")) == 2, again.get("connections"));

        Peer missing = Peer.open(streamPath(sid("missing")));
        Closed closed = missing.helloRefused(obj("user_id", "u1"));
        check("hello without create on a missing session closes 4404", closed.code == 4404, closed);
        noteErrors("a hello on a missing session", missing);
        Answer answer = get("/api/v1/sessions/" + sid("missing"), null);
        check("that hello created nothing: HTTP GET of the session is 404",
                answer.status == 404, answer);
        closeAll();
    }

    static void checkSessionMetadata(Map<String, Object> s, String id, String where) {
        check(where + ".id is the session id", id == null ? s.get("id") instanceof String
                : id.equals(s.get("id")), s.get("id"));
        List<String> missing = new ArrayList<>();
        for (String field : List.of("id", "user_id", "title", "state", "created_at", "updated_at",
                "last_activity_at", "expires_at", "message_count", "extra", "last_seq", "epoch",
                "connections")) {
            if (!s.containsKey(field)) {
                missing.add(field);
            }
        }
        check(where + " has every SessionMetadata field", missing.isEmpty(), "missing " + missing);
        check(where + ": created_at, updated_at, last_activity_at are RFC 3339 UTC",
                isTime(s.get("created_at")) && isTime(s.get("updated_at"))
                && isTime(s.get("last_activity_at")), s);
        check(where + ": expires_at is RFC 3339 UTC or null",
                s.get("expires_at") == null || isTime(s.get("expires_at")), s.get("expires_at"));
        check(where + ": message_count, last_seq, connections are integers",
                s.get("message_count") instanceof Long && s.get("last_seq") instanceof Long
                && s.get("connections") instanceof Long, s);
        check(where + ": extra is an object, epoch a string, state one of the five",
                s.get("extra") instanceof Map && s.get("epoch") instanceof String
                && List.of("active", "idle", "disconnected", "closed", "expired")
                        .contains(s.get("state")), s);
    }

    static void checkExpiry(Map<String, Object> session) {
        long ttl = Long.parseLong(Objects.requireNonNullElse(System.getenv("TTL_SECONDS"), "600"));
        if (session.get("expires_at") == null) {
            check("expires_at is last_activity_at plus the TTL (" + ttl + " s)", false,
                    "expires_at is null");
            return;
        }
        Instant activity = instant(session.get("last_activity_at"));
        Instant expires = instant(session.get("expires_at"));
        check("expires_at is last_activity_at plus the TTL (" + ttl + " s)",
                Duration.between(activity, expires).equals(Duration.ofSeconds(ttl)), session);
    }

    static void activity() throws Exception {
        String id = sid("activity");
        Peer peer = Peer.open(streamPath(id));
        peer.hello(obj("create", true));
        Map<String, Object> before = map(map(get("/api/v1/sessions/" + id, null).json())
                .get("metadata"));
        Thread.sleep(20);  // so that the next activity has a later time
        peer.call(obj("type", "message", "message", obj("role", "user", "content", "activity",
                "created_at", "2025-01-02T03:04:05Z")));
        Map<String, Object> after = map(map(get("/api/v1/sessions/" + id, null).json())
                .get("metadata"));
        check("a message moves last_activity_at on", instant(after.get("last_activity_at"))
                .isAfter(instant(before.get("last_activity_at"))), before + " then " + after);
        checkExpiry(after);
        closeAll();
    }

    static void presence() throws Exception {
        String id = sid("presence");
        Peer watcher = Peer.open(streamPath(id));
        watcher.hello(obj("create", true));
        Peer agent = Peer.open(streamPath(id));
        String agentId = (String) agent.hello(obj("role", "agent")).get("connection_id");
        Map<String, Object> joined = watcher.takeType("presence");
        check("presence joined names the new connection, its role agent, and 2 connections",
                agentId.equals(joined.get("joined")) && "agent".equals(joined.get("role"))
                && num(joined.get("connections")) == 2, joined);
        Peer client = Peer.open(streamPath(id));
        String clientId = (String) client.hello(obj()).get("connection_id");
        Map<String, Object> joinedClient = watcher.takeType("presence");
        check("a hello without role is a client in presence", clientId.equals(
                joinedClient.get("joined")) && "client".equals(joinedClient.get("role"))
                && num(joinedClient.get("connections")) == 3, joinedClient);
        agent.close();
        Map<String, Object> left = watcher.takeType("presence");
        check("presence left names the connection that closed, its role, and the count now",
                agentId.equals(left.get("left")) && "agent".equals(left.get("role"))
                && num(left.get("connections")) == 2, left);
        closeAll();
    }

    static void helloRefusals() throws Exception {
        String id = sid("refusals");
        Peer.open(streamPath(id)).hello(obj("create", true));
        Map<String, Object> firstFrames = new LinkedHashMap<>();
        firstFrames.put("a ping", Json.write(obj("type", "ping", "id", "p1")));
        firstFrames.put("text that is not JSON", "hello?");
        firstFrames.put("a hello whose create is a string",
                Json.write(obj("type", "hello", "create", "yes")));
        firstFrames.put("a hello whose last_seq is a string",
                Json.write(obj("type", "hello", "last_seq", "17")));
        firstFrames.put("a hello whose token is a number",
                Json.write(obj("type", "hello", "token", 5)));
        firstFrames.put("a JSON array", "[\"hello\"]");
        for (Map.Entry<String, Object> first : firstFrames.entrySet()) {
            Peer peer = Peer.open(streamPath(id));
            peer.sendText((String) first.getValue());
            Closed closed = peer.awaitClose(WAIT_MS);
            List<Map<String, Object>> errors = peer.heldOfType("error");
            check("a first frame that is " + first.getKey() + " gets error bad_request, then "
                    + "close 1008", closed.code == 1008 && errors.size() == 1
                    && "bad_request".equals(errors.get(0).get("code")),
                    closed + " after " + errors);
        }
        Peer roled = Peer.open(streamPath(id));
        roled.sendText(Json.write(obj("type", "hello", "role", "boss")));
        Map<String, Object> answer = roled.take("welcome or error",
                f -> Set.of("welcome", "error").contains(type(f)));
        note("a hello with role \"boss\" (neither client nor agent): " + summary(answer));
        Peer eager = Peer.open(streamPath(id));
        eager.send(obj("type", "hello"));
        eager.send(obj("type", "ping", "id", "eager-ping"));
        eager.send(obj("type", "events", "id", "eager-events"));
        Map<String, Object> eagerPong = eager.take("eager pong",
                f -> "eager-ping".equals(f.get("id")));
        Map<String, Object> eagerEvents = eager.take("eager events",
                f -> "eager-events".equals(f.get("id")));
        check("requests sent right behind hello, before welcome, are answered after it",
                "pong".equals(type(eagerPong)) && "events".equals(type(eagerEvents))
                && "welcome".equals(eager.arrivals.get(0)), eager.arrivals);
        Peer twice = Peer.open(streamPath(id));
        twice.hello(obj());
        twice.send(obj("type", "hello", "id", "h2"));
        Map<String, Object> error = twice.takeType("error");
        check("a second hello gets error bad_request", "bad_request".equals(error.get("code")),
                error);
        check("and the connection stays open", "pong".equals(type(twice.call(obj("type", "ping")))),
                "");
        closeAll();
    }

    // ---------------------------------------------------------------- publishing

    static void publishing() throws Exception {
        String id = sid("publish");
        Peer viewer = Peer.open(streamPath(id));
        viewer.hello(obj("create", true));
        Peer publisher = Peer.open(streamPath(id));
        publisher.hello(obj("role", "agent"));
        List<Map<String, Object>> sent = new ArrayList<>();
        for (int i = 1; i <= 5; i++) {
            Map<String, Object> event = obj("type", "token", "content", "t" + i);
            Map<String, Object> ack = publisher.call(obj("type", "event", "id", "e" + i,
                    "event", event, "key", "k" + i));
            sent.add(event);
            check("ack " + i + " echoes the id and carries seq " + i + ", and no duplicate field",
                    "ack".equals(type(ack)) && ("e" + i).equals(ack.get("id"))
                    && Long.valueOf(i).equals(ack.get("seq")) && !ack.containsKey("duplicate"),
                    ack);
        }
        List<Map<String, Object>> seen = viewer.takeEvents(5);
        checkEventRun("the viewer", seen, 1, sent);
        publisher.call(obj("type", "ping"));
        check("the publisher does not get its own events back",
                publisher.heldOfType("event").isEmpty(), "");

        Map<String, Object> intAck = publisher.call(obj("type", "event", "id", 42,
                "event", obj("type", "token", "content", "int id")));
        check("an integer id is echoed as the same integer",
                Long.valueOf(42).equals(intAck.get("id")),
                intAck);
        Map<String, Object> extra = publisher.call(obj("type", "event", "id", "x1",
                "event", obj("type", "token", "content", "extra"), "x_unknown", obj("a", 1)));
        check("an unknown field in an event frame is ignored", "ack".equals(type(extra)), extra);
        viewer.takeEvents(2);

        // Pipelined: 40 events sent without waiting, acks read afterwards.
        int pipelined = 40;
        List<Map<String, Object>> batch = new ArrayList<>();
        for (int i = 0; i < pipelined; i++) {
            Map<String, Object> event = obj("type", "token", "content", "p" + i);
            batch.add(event);
            publisher.send(obj("type", "event", "id", "p" + i, "event", event));
        }
        long expected = 8;
        boolean inOrder = true;
        for (int i = 0; i < pipelined; i++) {
            String want = "p" + i;
            Map<String, Object> ack = publisher.take("ack " + want, f -> want.equals(f.get("id")));
            inOrder &= Long.valueOf(expected + i).equals(ack.get("seq"));
        }
        check("pipelined events from one connection get seqs in the order sent", inOrder, "");
        checkEventRun("the viewer, for pipelined events", viewer.takeEvents(pipelined), expected,
                batch);

        // Two publishers at once: the viewer still sees one gap-free run.
        Peer second = Peer.open(streamPath(id));
        second.hello(obj("role", "agent"));
        publisher.takeType("presence");
        for (int i = 0; i < 20; i++) {
            publisher.send(obj("type", "event", "id", "a" + i,
                    "event", obj("type", "token", "content", "a" + i)));
            second.send(obj("type", "event", "id", "b" + i,
                    "event", obj("type", "token", "content", "b" + i)));
        }
        List<Map<String, Object>> mixed = viewer.takeEvents(40);
        checkEventRun("the viewer, for two publishers at once", mixed, expected + pipelined, null);
        List<Object> fromA = new ArrayList<>();
        for (Map<String, Object> frame : mixed) {
            String content = (String) map(frame.get("event")).get("content");
            if (content.startsWith("a")) {
                fromA.add(content);
            }
        }
        List<Object> wantA = new ArrayList<>();
        for (int i = 0; i < 20; i++) {
            wantA.add("a" + i);
        }
        check("each publisher's events keep their order among the others'", fromA.equals(wantA),
                fromA);
        List<Map<String, Object>> crossed = publisher.takeEvents(20);
        check("each publisher sees the other's 20 events, not its own",
                crossed.stream().allMatch(f -> ((String) map(f.get("event")).get("content"))
                        .startsWith("b")), summary(crossed));
        closeAll();
    }

    /** Frames with seq first, first+1, ... whose events carry what was sent (if given). */
    static void checkEventRun(String who, List<Map<String, Object>> frames, long first,
            List<Map<String, Object>> sent) {
        boolean gapless = true;
        boolean stamped = true;
        for (int i = 0; i < frames.size(); i++) {
            Map<String, Object> frame = frames.get(i);
            gapless &= Long.valueOf(first + i).equals(frame.get("seq"));
            stamped &= isTime(frame.get("ts")) && frame.get("event") instanceof Map;
        }
        check(who + " gets event frames with seq " + first + ".." + (first + frames.size() - 1)
                + " in order, no gap", gapless, seqs(frames));
        check(who + ": each event frame has ts in RFC 3339 UTC and an event object", stamped,
                summary(frames));
        if (sent != null) {
            boolean same = frames.size() == sent.size();
            for (int i = 0; same && i < sent.size(); i++) {
                same = covers(sent.get(i), frames.get(i).get("event"));
            }
            check(who + ": each event is the one published", same, summary(frames));
        }
    }

    static void idempotencyKeys() throws Exception {
        String id = sid("keys");
        Peer viewer = Peer.open(streamPath(id));
        viewer.hello(obj("create", true));
        Peer publisher = Peer.open(streamPath(id));
        publisher.hello(obj("role", "agent"));
        for (int i = 1; i <= 3; i++) {
            publisher.call(obj("type", "event", "event", obj("type", "token", "content", "k" + i),
                    "key", "key-" + i));
        }
        viewer.takeEvents(3);
        Map<String, Object> dup = publisher.call(obj("type", "event", "id", "again",
                "event", obj("type", "token", "content", "changed"), "key", "key-2"));
        check("a repeated key is acked with the first seq and duplicate true",
                Long.valueOf(2).equals(dup.get("seq")) && Boolean.TRUE.equals(dup.get("duplicate"))
                && "again".equals(dup.get("id")), dup);
        Map<String, Object> next = publisher.call(obj("type", "event",
                "event", obj("type", "token", "content", "fourth"), "key", "key-4"));
        check("a new key after it gets the next seq, 4", Long.valueOf(4).equals(next.get("seq")),
                next);
        Map<String, Object> seen = viewer.takeType("event");
        check("viewers got nothing for the duplicate: their next event is seq 4",
                Long.valueOf(4).equals(seen.get("seq"))
                && "fourth".equals(map(seen.get("event")).get("content")), seen);
        publisher.close();

        Peer retry = Peer.open(streamPath(id));
        retry.hello(obj("role", "agent"));
        Map<String, Object> retried = retry.call(obj("type", "event",
                "event", obj("type", "token", "content", "k1"), "key", "key-1"));
        check("a key repeated from another connection (a publisher's retry) is a duplicate of "
                + "seq 1", Long.valueOf(1).equals(retried.get("seq"))
                && Boolean.TRUE.equals(retried.get("duplicate")), retried);
        Map<String, Object> message = obj("role", "user", "content", "keyed",
                "created_at", "2025-01-02T03:04:05Z");
        Map<String, Object> firstAck = retry.call(obj("type", "message", "message", message,
                "key", "key-m"));
        Map<String, Object> secondAck = retry.call(obj("type", "message", "message", message,
                "key", "key-m"));
        check("a message with a repeated key is a duplicate of its first seq",
                Objects.equals(firstAck.get("seq"), secondAck.get("seq"))
                && Boolean.TRUE.equals(secondAck.get("duplicate"))
                && !firstAck.containsKey("duplicate"), firstAck + " then " + secondAck);
        Map<String, Object> full = map(get("/api/v1/sessions/" + id, null).json());
        check("the duplicate message was not added to history",
                list(full.get("messages")).size() == 1, full.get("messages"));
        Map<String, Object> longest = retry.call(obj("type", "event",
                "event", obj("type", "token", "content", "128"), "key", "k".repeat(128)));
        check("a key of 128 characters is accepted", "ack".equals(type(longest)), longest);
        Map<String, Object> tooLong = retry.call(obj("type", "event",
                "event", obj("type", "token", "content", "129"), "key", "k".repeat(129)));
        checkError("a key of 129 characters", tooLong, "bad_request");
        Map<String, Object> numeric = retry.call(obj("type", "event",
                "event", obj("type", "token", "content", "n"), "key", 7));
        checkError("a key that is a number", numeric, "bad_request");
        closeAll();
    }

    static void eventTypes() throws Exception {
        String id = sid("types");
        Peer viewer = Peer.open(streamPath(id));
        viewer.hello(obj("create", true));
        Peer publisher = Peer.open(streamPath(id));
        publisher.hello(obj("role", "agent"));
        List<Map<String, Object>> events = List.of(
                obj("type", "token", "content", "h\u00e9 \ud83c\udf8b \"quoted\"\n\\"),
                obj("type", "thinking", "content", "pondering"),
                obj("type", "message", "message", obj("id", "m-ev", "role", "assistant",
                        "content", "as an event", "created_at", "2025-01-02T03:04:05Z")),
                obj("type", "tool_start", "tool_call_id", "t1", "tool_name", "search",
                        "arguments", obj("q", "bamboo", "n", 3)),
                obj("type", "tool_complete", "tool_call_id", "t1",
                        "result", obj("success", true, "content", "found", "error", null)),
                obj("type", "tool_error", "tool_call_id", "t2", "error", "boom"),
                obj("type", "complete", "usage", obj("prompt_tokens", 10,
                        "completion_tokens", 5, "total_tokens", 15)),
                obj("type", "complete"),
                obj("type", "error", "message", "bad thing", "code", "E42"),
                obj("type", "error", "message", "no code"),
                obj("type", "state_change", "from", "active", "to", "idle"),
                obj("type", "custom", "name", "mixed",
                        "data", list(1, "two", obj("three", 3.5), null, true)),
                obj("type", "custom", "name", "scalar", "data", 7),
                obj("type", "custom", "name", "nothing", "data", null));
        List<Map<String, Object>> accepted = new ArrayList<>();
        for (Map<String, Object> event : events) {
            Map<String, Object> ack = publisher.call(obj("type", "event", "event", event));
            if (check("AgentEvent " + describeEvent(event) + " is accepted",
                    "ack".equals(type(ack)),
                    ack)) {
                accepted.add(event);
            }
        }
        List<Map<String, Object>> seen = viewer.takeEvents(accepted.size());
        for (int i = 0; i < accepted.size(); i++) {
            check("the viewer gets AgentEvent " + describeEvent(accepted.get(i)) + " as published",
                    covers(accepted.get(i), seen.get(i).get("event")), seen.get(i).get("event"));
            Set<String> added = new HashSet<>(map(seen.get(i).get("event")).keySet());
            added.removeAll(accepted.get(i).keySet());
            if (!added.isEmpty()) {
                note("AgentEvent " + describeEvent(accepted.get(i)) + " comes back with fields "
                        + "the publisher did not send: " + added);
            }
        }
        closeAll();
    }

    static String describeEvent(Map<String, Object> event) {
        String type = (String) event.get("type");
        return switch (type) {
            case "complete" -> type
                    + (event.containsKey("usage") ? " with usage" : " without usage");
            case "error" -> type + (event.containsKey("code") ? " with code" : " without code");
            case "custom" -> type + " (data " + Json.write(event.get("data")) + ")";
            default -> type;
        };
    }

    static void messageFrames() throws Exception {
        String id = sid("messages");
        Peer viewer = Peer.open(streamPath(id));
        viewer.hello(obj("create", true));
        Peer publisher = Peer.open(streamPath(id));
        publisher.hello(obj());
        Map<String, Object> bare = obj("role", "user", "content", "no id",
                "created_at", "2025-01-02T03:04:05Z");
        Map<String, Object> ack = publisher.call(obj("type", "message", "message", bare));
        check("a message frame is acked with a seq", "ack".equals(type(ack))
                && Long.valueOf(1).equals(ack.get("seq")), ack);
        Map<String, Object> frame = viewer.takeType("event");
        Map<String, Object> event = map(frame.get("event"));
        Map<String, Object> given = map(event.get("message"));
        check("viewers get it as the AgentEvent {type: message, message}",
                "message".equals(event.get("type")) && given != null
                && "no id".equals(given.get("content")) && "user".equals(given.get("role")), event);
        check("the server filled in the message id", given != null
                && given.get("id") instanceof String s && !s.isEmpty(), given);
        Map<String, Object> full = obj("id", "m-full", "role", "assistant", "content", "calling",
                "created_at", "2025-01-02T03:04:06.250Z",
                "tool_calls", list(obj("id", "call-1", "name", "search",
                        "arguments", obj("q", "x")), obj("id", "call-2", "name", "fetch",
                        "arguments", obj())),
                "metadata", obj("source", "java", "n", 1));
        publisher.call(obj("type", "message", "message", full));
        Map<String, Object> tool = obj("id", "m-tool", "role", "tool", "content", "result",
                "created_at", "2025-01-02T03:04:07Z", "tool_call_id", "call-1");
        publisher.call(obj("type", "message", "message", tool));
        Map<String, Object> system = obj("role", "system", "content", "be brief",
                "created_at", "2025-01-02T03:04:08Z");
        publisher.call(obj("type", "message", "message", system));
        viewer.takeEvents(3);
        publisher.call(obj("type", "ping"));
        check("the publisher of a message does not get its event back",
                publisher.heldOfType("event").isEmpty(), summary(publisher.held));
        Map<String, Object> history = publisher.call(obj("type", "history"));
        List<Object> messages = list(history.get("messages"));
        check("history returns the 4 messages, oldest first", messages.size() == 4
                && Objects.equals(map(messages.get(0)).get("id"), given.get("id"))
                && "m-full".equals(map(messages.get(1)).get("id"))
                && "m-tool".equals(map(messages.get(2)).get("id")), summary(messages));
        check("a message's tool_calls, metadata and tool_call_id come back as sent",
                messages.size() == 4 && sameMessage(full, map(messages.get(1)))
                && sameMessage(tool, map(messages.get(2))), summary(messages));
        check("a message's created_at comes back as the same instant in RFC 3339 UTC",
                messages.size() == 4 && isTime(map(messages.get(1)).get("created_at")), messages);
        Map<String, Object> metadata = map(map(get("/api/v1/sessions/" + id, null).json())
                .get("metadata"));
        check("message_count counts the 4 messages", num(metadata.get("message_count")) == 4,
                metadata);
        Map<String, Object> badRole = publisher.call(obj("type", "message", "message",
                obj("role", "wizard", "content", "x", "created_at", "2025-01-02T03:04:05Z")));
        checkError("a message whose role is not one of the four", badRole, "bad_request");
        Map<String, Object> noContent = publisher.call(obj("type", "message",
                "message", obj("role", "user", "created_at", "2025-01-02T03:04:05Z")));
        note("a message without content: " + summary(noContent));
        Map<String, Object> undated = publisher.call(obj("type", "message",
                "message", obj("role", "user", "content", "undated")));
        note("a message without created_at: " + summary(undated));
        closeAll();
    }

    /** Every field sent comes back equal; created_at as the same instant. */
    static boolean sameMessage(Map<String, Object> sent, Map<String, Object> got) {
        Map<String, Object> rest = new LinkedHashMap<>(sent);
        Object created = rest.remove("created_at");
        return covers(rest, got) && instant(created).equals(instant(got.get("created_at")));
    }

    // ---------------------------------------------------------------- reads

    static void history() throws Exception {
        String id = sid("history");
        Peer peer = Peer.open(streamPath(id));
        peer.hello(obj("create", true));
        for (int i = 0; i < 5; i++) {
            peer.call(obj("type", "message", "message", obj("id", "h" + i, "role", "user",
                    "content", "m" + i, "created_at", "2025-01-02T03:04:0" + i + "Z")));
        }
        checkHistory(peer, obj(), List.of("h0", "h1", "h2", "h3", "h4"), false,
                "history without limit or before returns all 5");
        checkHistory(peer, obj("limit", 2), List.of("h3", "h4"), true,
                "history limit 2 returns the newest 2, oldest first, has_more true");
        checkHistory(peer, obj("limit", 10, "before", 3), List.of("h0", "h1", "h2"), false,
                "history before 3 returns messages 0..2, has_more false");
        checkHistory(peer, obj("limit", 2, "before", 3), List.of("h1", "h2"), true,
                "history limit 2 before 3 returns messages 1..2, has_more true");
        checkHistory(peer, obj("limit", 5), List.of("h0", "h1", "h2", "h3", "h4"), false,
                "history limit 5 of 5 has_more false");
        checkHistory(peer, obj("before", 0), List.of(), false,
                "history before 0 returns nothing, has_more false");
        for (Map<String, Object> odd : List.of(obj("limit", 0), obj("limit", -1),
                obj("before", 99))) {
            Map<String, Object> request = obj("type", "history");
            request.putAll(odd);
            note("history with " + summary(odd) + ": " + summary(peer.call(request)));
        }
        Map<String, Object> bad = peer.call(obj("type", "history", "limit", "ten"));
        checkError("history whose limit is a string", bad, "bad_request");
        closeAll();
    }

    static void readDefaults() throws Exception {
        String id = sid("defaults");
        Peer first = Peer.open(streamPath(id));
        first.hello(obj("create", true));
        Peer second = Peer.open(streamPath(id));
        second.hello(obj());
        for (int i = 0; i < 105; i++) {
            first.send(obj("type", "message", "id", "m" + i, "message", obj("id", "d" + i,
                    "role", "user", "content", "m" + i, "created_at", "2025-01-02T03:04:05Z")));
        }
        first.take("ack m104", f -> "m104".equals(f.get("id")));
        Map<String, Object> history = first.call(obj("type", "history"));
        List<Object> messages = list(history.get("messages"));
        check("history without limit returns the newest 100, oldest first, has_more true",
                messages.size() == 100 && "d5".equals(map(messages.get(0)).get("id"))
                && "d104".equals(map(messages.get(99)).get("id"))
                && Boolean.TRUE.equals(history.get("has_more")), messages.size() + " messages");
        // 105 events so far; 896 more from two connections make 1001.
        for (int i = 0; i < 448; i++) {
            first.send(obj("type", "event", "id", "f" + i, "event", obj("type", "token",
                    "content", "f")));
            second.send(obj("type", "event", "id", "s" + i, "event", obj("type", "token",
                    "content", "s")));
        }
        first.take("ack f447", f -> "f447".equals(f.get("id")));
        second.take("ack s447", f -> "s447".equals(f.get("id")));
        Map<String, Object> events = first.call(obj("type", "events"));
        List<Object> page = list(events.get("events"));
        check("events without after_seq or limit returns seq 1..1000 (limit defaults to 1000)",
                page.size() == 1000 && num(map(page.get(0)).get("seq")) == 1
                && num(map(page.get(999)).get("seq")) == 1000
                && num(events.get("last_seq")) == 1001,
                page.size() + " events, last_seq " + events.get("last_seq"));
        Map<String, Object> rest = first.call(obj("type", "events", "after_seq", 1000));
        check("and after_seq 1000 returns the 1001st", seqsOf(list(rest.get("events")))
                .equals(List.of(1001L)), summary(rest));
        Answer whole = get("/api/v1/sessions/" + id, null);
        List<Object> all = list(map(whole.json()).get("messages"));
        check("HTTP GET of the session returns its whole history, 105 messages in order",
                all.size() == 105 && "d0".equals(map(all.get(0)).get("id"))
                && "d104".equals(map(all.get(104)).get("id")), all.size() + " messages");
        closeAll();
    }

    static void checkHistory(Peer peer, Map<String, Object> args, List<String> ids, boolean more,
            String what) throws Exception {
        Map<String, Object> request = obj("type", "history");
        request.putAll(args);
        Map<String, Object> reply = peer.call(request);
        List<Object> got = new ArrayList<>();
        for (Object message : list(reply.get("messages"))) {
            got.add(map(message).get("id"));
        }
        check(what, "history".equals(type(reply)) && got.equals(ids)
                && Boolean.valueOf(more).equals(reply.get("has_more")), summary(reply));
    }

    static void eventsReads() throws Exception {
        String id = sid("events");
        Peer peer = Peer.open(streamPath(id));
        peer.hello(obj("create", true));
        for (int i = 1; i <= 6; i++) {
            peer.call(obj("type", "event", "event", obj("type", "token", "content", "e" + i)));
        }
        Map<String, Object> all = peer.call(obj("type", "events"));
        List<Object> items = list(all.get("events"));
        check("events without after_seq returns all 6, oldest first, and last_seq 6",
                "events".equals(type(all)) && seqsOf(items).equals(List.of(1L, 2L, 3L, 4L, 5L, 6L))
                && num(all.get("last_seq")) == 6, summary(all));
        check("each item of events is {seq, ts, event}", items.stream().allMatch(item ->
                map(item).get("seq") instanceof Long && isTime(map(item).get("ts"))
                && map(item).get("event") instanceof Map), summary(items));
        Map<String, Object> page = peer.call(obj("type", "events", "after_seq", 2, "limit", 2));
        check("events after_seq 2 limit 2 returns seq 3 and 4",
                seqsOf(list(page.get("events"))).equals(List.of(3L, 4L)), summary(page));
        note("events after_seq 2 limit 2 answers last_seq " + page.get("last_seq")
                + " (the log ends at 6, the page at 4)");
        Map<String, Object> past = peer.call(obj("type", "events", "after_seq", 6));
        check("events after the log's end is an empty list",
                list(past.get("events")).isEmpty() && num(past.get("last_seq")) == 6,
                summary(past));
        Map<String, Object> bad = peer.call(obj("type", "events", "after_seq", "two"));
        checkError("events whose after_seq is a string", bad, "bad_request");
        closeAll();
    }

    // ---------------------------------------------------------------- resume

    static void dropAndResume() throws Exception {
        String id = sid("resume");
        Peer publisher = Peer.open(streamPath(id));
        Map<String, Object> welcome = publisher.hello(obj("create", true, "role", "agent"));
        String epoch = (String) welcome.get("epoch");
        Peer watcher = Peer.open(streamPath(id));
        watcher.hello(obj());
        Peer viewer = Peer.open(streamPath(id));
        String viewerId = (String) viewer.hello(obj()).get("connection_id");
        watcher.takeType("presence");
        publishTokens(publisher, 1, 3);
        List<Map<String, Object>> before = viewer.takeEvents(3);
        long lastSeen = num(before.get(2).get("seq"));
        viewer.ws.abort();
        Map<String, Object> left = watcher.take("presence left of the aborted viewer",
                f -> viewerId.equals(f.get("left")));
        check("a viewer that drops (abort) is announced as left", num(left.get("connections")) == 2,
                left);
        List<Map<String, Object>> missed = publishTokens(publisher, 4, 7);
        Peer back = Peer.open(streamPath(id));
        Map<String, Object> resumed = back.hello(obj("last_seq", lastSeen, "epoch", epoch));
        check("resuming with last_seq 3 and the epoch: resumed true, replay 4, last_seq 7",
                Boolean.TRUE.equals(resumed.get("resumed")) && num(resumed.get("replay")) == 4
                && num(resumed.get("last_seq")) == 7, resumed);
        checkEventRun("the resumed viewer's replay", back.takeEvents(4), 4, missed);
        List<Map<String, Object>> live = publishTokens(publisher, 8, 8);
        checkEventRun("the resumed viewer, live after the replay", back.takeEvents(1), 8, live);
        back.call(obj("type", "ping"));
        check("the resumed viewer got each missed event once: nothing more",
                back.heldOfType("event").isEmpty(), summary(back.held));
        closeAll();
    }

    static void resumeWhilePublishing() throws Exception {
        String id = sid("handoff");
        Peer publisher = Peer.open(streamPath(id));
        String epoch = (String) publisher.hello(obj("create", true, "role", "agent")).get("epoch");
        publishTokens(publisher, 1, 20);
        int more = 300;
        CompletableFuture<Void> publishing = CompletableFuture.runAsync(() -> {
            try {
                for (int i = 21; i <= 20 + more; i++) {
                    publisher.send(obj("type", "event", "event", obj("type", "token",
                            "content", "h" + i)));
                }
            } catch (Exception failed) {
                throw new CompletionException(failed);
            }
        });
        Peer viewer = Peer.open(streamPath(id));
        Map<String, Object> welcome = viewer.hello(obj("last_seq", 10, "epoch", epoch));
        long replay = num(welcome.get("replay"));
        publishing.get(WAIT_MS, TimeUnit.MILLISECONDS);
        List<Map<String, Object>> seen = viewer.takeEvents(10 + more);
        boolean exact = true;
        for (int i = 0; i < seen.size(); i++) {
            long seq = 11 + i;
            String content = (seq <= 20 ? "r" : "h") + seq;
            exact &= Long.valueOf(seq).equals(seen.get(i).get("seq"))
                    && content.equals(map(seen.get(i).get("event")).get("content"));
        }
        check("resuming from seq 10 while 300 events are being published: resumed, replay "
                + "covers at least 11..20", Boolean.TRUE.equals(welcome.get("resumed"))
                && replay >= 10 && replay == num(welcome.get("last_seq")) - 10, welcome);
        check("then seq 11..320, each once, in order, across the replay and live hand-off",
                exact, seqs(seen).subList(0, Math.min(40, seen.size())));
        viewer.call(obj("type", "ping"));
        check("and nothing after them", viewer.heldOfType("event").isEmpty(), summary(viewer.held));
        closeAll();
    }

    static void replayUninterrupted() throws Exception {
        String id = sid("strict-replay");
        Peer publisher = Peer.open(streamPath(id));
        String epoch = (String) publisher.hello(obj("create", true, "role", "agent")).get("epoch");
        // 200 events of 7 kB: 1.4 MB, past the 1 MiB a session keeps in memory by default,
        // so that the replay is read from the store in pages.
        for (int i = 1; i <= 200; i++) {
            publisher.send(obj("type", "event", "id", "s" + i, "event", obj("type", "token",
                    "content", "s".repeat(7000))));
        }
        publisher.take("ack s200", f -> "s200".equals(f.get("id")));
        Peer resumer = Peer.open(streamPath(id));
        resumer.send(obj("type", "hello", "last_seq", 0, "epoch", epoch));
        List<Peer> joiners = new ArrayList<>();
        for (int i = 0; i < 3; i++) {  // presence and live events while the replay is sent
            Peer joiner = Peer.open(streamPath(id));
            joiner.hello(obj());
            joiners.add(joiner);
            publisher.send(obj("type", "event", "event", obj("type", "token", "content", "live")));
        }
        Map<String, Object> welcome = resumer.takeType("welcome");
        long replay = num(welcome.get("replay"));
        List<String> order = new ArrayList<>();
        for (int i = 0; i < replay; i++) {
            order.add(type(resumer.next()));
        }
        // A copy: frames still arrive (the live events, the joiners' presence), and a
        // view (subList) of the list the listener thread appends to threw
        // ConcurrentModificationException when one came between its making and its printing.
        List<String> arrived = List.copyOf(resumer.arrivals);
        check("a resumed connection gets welcome, then its replay's " + replay + " events with "
                + "no other frame among them, while others join and publish",
                replay >= 200 && order.stream().allMatch("event"::equals) && "welcome".equals(
                arrived.get(0)), arrived.subList(0, Math.min(arrived.size(), 12))
                + "... types after welcome: "
                + order.stream().filter(t -> !t.equals("event")).toList());
        closeAll();
    }

    static List<Map<String, Object>> publishTokens(Peer publisher, int from, int to)
            throws Exception {
        List<Map<String, Object>> sent = new ArrayList<>();
        for (int i = from; i <= to; i++) {
            Map<String, Object> event = obj("type", "token", "content", "r" + i);
            Map<String, Object> ack = publisher.call(obj("type", "event", "event", event));
            if (!Long.valueOf(i).equals(ack.get("seq"))) {
                throw new Problem("expected seq " + i + ", got " + ack);
            }
            sent.add(event);
        }
        return sent;
    }

    static void resumeVariants() throws Exception {
        String id = sid("variants");
        Peer publisher = Peer.open(streamPath(id));
        String epoch = (String) publisher.hello(obj("create", true)).get("epoch");
        publishTokens(publisher, 1, 5);
        resumeCase(id, obj("last_seq", 2), true, 3, "last_seq 2 alone (same epoch)");
        resumeCase(id, obj("last_seq", 0, "epoch", epoch), true, 5,
                "last_seq 0 with the epoch replays the whole log");
        resumeCase(id, obj("last_seq", 5, "epoch", epoch), true, 0,
                "last_seq at the log's end: resumed, nothing to replay");
        resumeCase(id, obj("last_seq", 2, "epoch", epoch + "x"), false, 0,
                "another epoch: resumed false, nothing replayed");
        resumeCase(id, obj("last_seq", 9, "epoch", epoch), false, 0,
                "last_seq beyond the log's end: resumed false, nothing replayed");
        resumeCase(id, obj(), false, 0, "no last_seq: live events only");
        resumeCase(id, obj("epoch", epoch), false, 0,
                "an epoch without last_seq: live events only");
        resumeCase(id, obj("last_seq", 2, "epoch", ""), false, 0,
                "an empty epoch is another epoch: resumed false, nothing replayed");
        Peer negative = Peer.open(streamPath(id));
        Closed refused = negative.helloRefused(obj("last_seq", -1));
        note("a hello with last_seq -1: " + summary(negative.held) + ", then " + refused);
        closeAll();
    }

    static void resumeCase(String id, Map<String, Object> hello, boolean resumed, long replay,
            String what) throws Exception {
        Peer peer = Peer.open(streamPath(id));
        Map<String, Object> welcome = peer.hello(hello);
        boolean agreed = Boolean.valueOf(resumed).equals(welcome.get("resumed"))
                && (!resumed || num(welcome.get("replay")) == replay)
                && (resumed || !welcome.containsKey("replay") || num(welcome.get("replay")) == 0);
        List<Map<String, Object>> events = replay > 0 ? peer.takeEvents((int) replay) : List.of();
        peer.call(obj("type", "ping"));
        List<Map<String, Object>> extra = peer.heldOfType("event");
        long first = 5 - replay + 1;
        boolean run = true;
        for (int i = 0; i < events.size(); i++) {
            run &= Long.valueOf(first + i).equals(events.get(i).get("seq"));
        }
        check(what, agreed && run && extra.isEmpty(),
                summary(welcome) + " then " + seqs(events) + " and " + seqs(extra));
        peer.close();
    }

    static void pingFrames() throws Exception {
        Peer peer = Peer.open(streamPath(sid("ping")));
        peer.hello(obj("create", true));
        Map<String, Object> pong = peer.call(obj("type", "ping", "id", "p-1"));
        check("ping is answered by pong with the same id", "pong".equals(type(pong))
                && "p-1".equals(pong.get("id")), pong);
        Map<String, Object> intPong = peer.call(obj("type", "ping", "id", 7));
        check("ping with an integer id gets pong with that integer",
                Long.valueOf(7).equals(intPong.get("id")) && "pong".equals(type(intPong)), intPong);
        for (Object id : list(0, -5, 9007199254740993L, Long.MAX_VALUE, Long.MIN_VALUE, "",
                "\u00e9t\u00e9 \ud83c\udf8b")) {
            Map<String, Object> echoed = peer.call(obj("type", "ping", "id", id));
            check("the id " + Json.write(id) + " is echoed exactly", "pong".equals(type(echoed))
                    && Objects.equals(id, echoed.get("id")), echoed);
        }
        for (String id : List.of("1.5", "true", "{}", "[]")) {
            peer.sendText("{\"type\": \"ping\", \"id\": " + id + "}");
            Map<String, Object> error = peer.takeType("error");
            check("a ping whose id is " + id + " (neither string nor integer) gets bad_request",
                    "bad_request".equals(error.get("code")), error);
        }
        for (String frame : List.of("{\"type\": \"ping\", \"id\": null}", "{\"type\": \"ping\"}")) {
            peer.sendText(frame);
            Map<String, Object> answer = peer.take("an answer to " + frame, f -> true);
            note("the frame " + frame + " is answered " + summary(answer));
        }
        peer.sendText("{\"type\": \"ping\", \"id\": 18446744073709551616}");
        Object huge = peer.take("an answer to id 2^64", f -> true);
        note("a ping whose id is 2^64 (past 64 bits): " + summary(huge));
        closeAll();
    }

    // ---------------------------------------------------------------- state

    static void stateChanges() throws Exception {
        String id = sid("state");
        Peer viewer = Peer.open(streamPath(id));
        viewer.hello(obj("create", true));
        Peer owner = Peer.open(streamPath(id));
        owner.hello(obj());
        Map<String, Object> idle = owner.call(obj("type", "state", "state", "idle"));
        check("state idle is acked", "ack".equals(type(idle)), idle);
        note("the ack of state idle: " + summary(idle));
        Map<String, Object> metadata = map(map(get("/api/v1/sessions/" + id, null).json())
                .get("metadata"));
        check("after state idle the session's state is idle", "idle".equals(metadata.get("state")),
                metadata.get("state"));
        Map<String, Object> active = owner.call(obj("type", "state", "state", "active"));
        check("state active is acked", "ack".equals(type(active)), active);
        viewer.call(obj("type", "ping"));
        List<Map<String, Object>> changes = viewer.heldOfType("event");
        note("a viewer of state idle then active got " + (changes.isEmpty() ? "no event"
                : summary(changes)));
        Map<String, Object> bogus = owner.call(obj("type", "state", "state", "sleeping"));
        checkError("state sleeping (not one of the three)", bogus, "bad_request");
        Map<String, Object> expired = owner.call(obj("type", "state", "state", "expired"));
        checkError("state expired (a session state, but not one a client sets)", expired,
                "bad_request");
        closeAll();
    }

    static void stateClosed() throws Exception {
        String id = sid("closing");
        Peer viewer = Peer.open(streamPath(id));
        viewer.hello(obj("create", true));
        Peer owner = Peer.open(streamPath(id));
        owner.hello(obj());
        owner.call(obj("type", "message", "message", obj("role", "user", "content", "last words",
                "created_at", "2025-01-02T03:04:05Z")));
        owner.send(obj("type", "state", "id", "close-it", "state", "closed"));
        owner.send(obj("type", "event", "id", "after-close",
                "event", obj("type", "token", "content", "too late")));
        Closed ownerClose = owner.awaitClose(WAIT_MS);
        List<Map<String, Object>> lateAnswers = new ArrayList<>();
        for (Map<String, Object> frame : owner.held) {
            if ("after-close".equals(frame.get("id"))) {
                lateAnswers.add(frame);
            }
        }
        check("an event sent right after state closed is not acked",
                lateAnswers.stream().noneMatch(f -> "ack".equals(type(f))), summary(lateAnswers));
        note("an event sent right after state closed: " + (lateAnswers.isEmpty() ? "no answer"
                : summary(lateAnswers)));
        Closed viewerClose = viewer.awaitClose(WAIT_MS);
        for (Peer peer : List.of(owner, viewer)) {
            List<Map<String, Object>> closedFrames = peer.heldOfType("closed");
            check("state closed: " + peer.name + " gets a closed frame with a reason",
                    closedFrames.size() == 1 && closedFrames.get(0).get("reason") instanceof String,
                    summary(peer.held));
        }
        check("state closed: every connection is closed with 1000",
                ownerClose.code == 1000 && viewerClose.code == 1000, ownerClose + ", "
                + viewerClose);
        note("the closer's frames before its close: " + summary(owner.held));
        Peer late = Peer.open(streamPath(id));
        Closed refused = late.helloRefused(obj());
        check("a later attach to a closed session closes 4409", refused.code == 4409, refused);
        Peer lateCreate = Peer.open(streamPath(id));
        Closed refusedCreate = lateCreate.helloRefused(obj("create", true));
        check("a later attach with create to a closed session closes 4409 too",
                refusedCreate.code == 4409, refusedCreate);
        Answer answer = get("/api/v1/sessions/" + id, null);
        Map<String, Object> body = map(answer.json());
        check("a closed session's history stays readable over HTTP", answer.status == 200
                && list(body.get("messages")).size() == 1
                && "closed".equals(map(body.get("metadata")).get("state")), answer);
        Answer events = get("/api/v1/sessions/" + id + "/events", null);
        check("a closed session's events stay readable over HTTP, the message the last",
                events.status == 200 && list(map(events.json()).get("events")).size() == 1, events);
        closeAll();
    }

    // ---------------------------------------------------------------- errors

    static void errorFrames() throws Exception {
        String id = sid("errors");
        Peer peer = Peer.open(streamPath(id));
        peer.hello(obj("create", true));
        peer.sendText("{not json");
        checkUnanswerable("text that is not JSON", peer);
        peer.sendText("[1, 2]");
        checkUnanswerable("a JSON array", peer);
        peer.sendText("{\"id\": \"nt\"}");
        checkUnanswerable("an object without type", peer);
        peer.sendText("{\"type\": 5, \"id\": \"t5\"}");
        checkUnanswerable("an object whose type is a number", peer);
        Map<String, Object> unknownType = peer.call(obj("type", "teleport", "id", "tp"));
        checkError("a frame of unknown type", unknownType, "bad_request");
        Map<String, Object> noEvent = peer.call(obj("type", "event"));
        checkError("an event frame without event", noEvent, "bad_request");
        Map<String, Object> unknownEvent = peer.call(obj("type", "event",
                "event", obj("type", "teleport")));
        checkError("an AgentEvent of unknown type", unknownEvent, "bad_request");
        Map<String, Object> noContent = peer.call(obj("type", "event", "event", obj("type",
                "token")));
        checkError("a token event without content", noContent, "bad_request");
        Map<String, Object> wrongContent = peer.call(obj("type", "event",
                "event", obj("type", "token", "content", 5)));
        checkError("a token event whose content is a number", wrongContent, "bad_request");
        Map<String, Object> notObject = peer.call(obj("type", "event", "event", "token"));
        checkError("an event that is a string", notObject, "bad_request");
        Map<String, Object> noMessage = peer.call(obj("type", "message"));
        checkError("a message frame without message", noMessage, "bad_request");
        Map<String, Object> noState = peer.call(obj("type", "state"));
        checkError("a state frame without state", noState, "bad_request");
        peer.sendText("{\"type\": \"ping\", \"id\": [1]}");
        checkUnanswerable("a ping whose id is a list", peer);
        Map<String, Object> after = peer.call(obj("type", "ping"));
        check("after all those errors the connection is still open", "pong".equals(type(after)),
                after);
        Map<String, Object> log = peer.call(obj("type", "events"));
        check("none of them appended anything", list(log.get("events")).isEmpty(), summary(log));
        closeAll();
    }

    /** An error for a frame that has no id to echo: bad_request, and no id. */
    static void checkUnanswerable(String what, Peer peer) throws Exception {
        Map<String, Object> error = peer.takeType("error");
        check(what + " gets error bad_request and the connection stays open",
                "bad_request".equals(error.get("code")) && error.get("message") instanceof String,
                error);
    }

    static void checkError(String what, Map<String, Object> reply, String code) {
        check(what + " gets error " + code + " with the request's id, a code and a message",
                "error".equals(type(reply)) && code.equals(reply.get("code"))
                && reply.get("message") instanceof String && reply.containsKey("id"), reply);
        if ("error".equals(type(reply)) && !ERROR_CODES.contains(reply.get("code"))) {
            check("error code " + reply.get("code") + " is one PROTOCOL.md lists", false, reply);
        }
    }

    // ---------------------------------------------------------------- WebSocket layer

    static void largeAndFragmented() throws Exception {
        String id = sid("large");
        Peer viewer = Peer.open(streamPath(id));
        viewer.hello(obj("create", true));
        Peer publisher = Peer.open(streamPath(id));
        publisher.hello(obj());
        Map<String, Object> small = obj("type", "token", "content",
                "fragmented \u00e9\u00e8 \ud83c\udf8b");
        publisher.sendFragments(Json.write(obj("type", "event", "id", "frag", "event", small)), 5);
        Map<String, Object> ack = publisher.take("ack frag", f -> "frag".equals(f.get("id")));
        check("an event sent in 5 fragments (sendText last=false) is acked",
                "ack".equals(type(ack)),
                ack);
        Map<String, Object> seen = viewer.takeType("event");
        check("and reaches the viewer whole", covers(small, seen.get("event")), summary(seen));

        String big = "b".repeat(900 * 1024);
        Map<String, Object> large = obj("type", "token", "content", big);
        publisher.sendFragments(Json.write(obj("type", "event", "id", "big", "event", large)), 9);
        Map<String, Object> bigAck = publisher.take("ack big", f -> "big".equals(f.get("id")));
        check("a 900 KiB event sent in 9 fragments is acked", "ack".equals(type(bigAck)), bigAck);
        Map<String, Object> bigSeen = viewer.takeType("event");
        check("and reaches the viewer whole (900 KiB)",
                big.equals(map(bigSeen.get("event")).get("content")), "content differs");
        Map<String, Object> read = viewer.call(obj("type", "events", "after_seq", 1));
        check("and reads back whole through events", list(read.get("events")).size() == 1
                && big.equals(map(map(list(read.get("events")).get(0)).get("event"))
                        .get("content")), "content differs");

        String tooBig = Json.write(obj("type", "event", "id", "huge",
                "event", obj("type", "token", "content", "h".repeat(1100 * 1024))));
        try {
            publisher.sendFragments(tooBig, 11);
        } catch (Exception sending) {
            note("sending the 1.1 MiB message failed on the JDK side: " + describe(sending));
        }
        Closed closed = publisher.awaitClose(WAIT_MS);
        check("a message over 1 MiB (sent in 11 fragments) closes the connection with 1009",
                closed.code == 1009, closed);
        viewer.call(obj("type", "ping"));
        check("and appends nothing", viewer.heldOfType("event").isEmpty(), summary(viewer.held));
        closeAll();
    }

    static void frameLimit() throws Exception {
        String id = sid("limit");
        Peer viewer = Peer.open(streamPath(id));
        viewer.hello(obj("create", true));
        Peer exact = Peer.open(streamPath(id));
        exact.hello(obj());
        exact.sendText(frameOfSize(1024 * 1024, "exact"));
        Map<String, Object> ack = exact.take("ack exact", f -> "exact".equals(f.get("id")));
        check("a message of exactly 1 MiB (the default limit) is accepted", "ack".equals(type(ack)),
                ack);
        check("and reaches the viewer", num(viewer.takeType("event").get("seq")) == 1, "");
        Peer over = Peer.open(streamPath(id));
        over.hello(obj());
        over.sendText(frameOfSize(1024 * 1024 + 1, "over"));
        Closed closed = over.awaitClose(WAIT_MS);
        check("a single frame of 1 MiB + 1 byte closes the connection with 1009",
                closed.code == 1009, closed + " after " + summary(over.held));
        closeAll();
    }

    /**
     * An event frame of exactly that many bytes of JSON, 1,024 of them in a field the server
     * ignores: its event leaves room for the envelope of the frames viewers get it in
     * (docs/protocol.md, MessagePack), so it is stored.
     */
    static String frameOfSize(int bytes, String id) {
        String pad = "p".repeat(1024);
        String empty = Json.write(obj("type", "event", "id", id, "pad", pad,
                "event", obj("type", "token", "content", "")));
        return Json.write(obj("type", "event", "id", id, "pad", pad,
                "event", obj("type", "token", "content", "z".repeat(bytes - empty.length()))));
    }

    static void jdkFragments() throws Exception {
        String id = sid("fragments");
        Peer viewer = Peer.open(streamPath(id));
        viewer.hello(obj("create", true));
        Peer publisher = Peer.open(streamPath(id));
        publisher.hello(obj());
        String frame = Json.write(obj("type", "event", "id", "interleaved",
                "event", obj("type", "token", "content", "between fragments")));
        int half = frame.length() / 2;
        publisher.ws.sendText(frame.substring(0, half), false).get(WAIT_MS, TimeUnit.MILLISECONDS);
        publisher.ws.sendPing(ByteBuffer.wrap("mid".getBytes(StandardCharsets.UTF_8)))
                .get(WAIT_MS, TimeUnit.MILLISECONDS);
        publisher.ws.sendText(frame.substring(half), true).get(WAIT_MS, TimeUnit.MILLISECONDS);
        Map<String, Object> ack = publisher.take("ack interleaved",
                f -> "interleaved".equals(f.get("id")));
        check("a WebSocket ping between two fragments of a message: the message is acked",
                "ack".equals(type(ack)), ack);
        check("and the ping is answered", awaitPong(publisher, "mid"), publisher.pongs);
        String empties = Json.write(obj("type", "event", "id", "empties",
                "event", obj("type", "token", "content", "empty fragments")));
        publisher.ws.sendText("", false).get(WAIT_MS, TimeUnit.MILLISECONDS);
        publisher.ws.sendText(empties, false).get(WAIT_MS, TimeUnit.MILLISECONDS);
        publisher.ws.sendText("", true).get(WAIT_MS, TimeUnit.MILLISECONDS);
        Map<String, Object> emptyAck = publisher.take("ack empties",
                f -> "empties".equals(f.get("id")));
        check("a message whose first and last fragments are empty is acked",
                "ack".equals(type(emptyAck)), emptyAck);
        Peer packed = Peer.open(streamPath(id), MSGPACK);
        packed.hello(obj());
        byte[] bytes = MsgPack.pack(obj("type", "event", "id", "packed-fragments",
                "event", obj("type", "token", "content", "p".repeat(3000))));
        for (int i = 0; i < 3; i++) {
            packed.ws.sendBinary(ByteBuffer.wrap(bytes, i * bytes.length / 3, (i + 1)
                    * bytes.length / 3 - i * bytes.length / 3), i == 2)
                    .get(WAIT_MS, TimeUnit.MILLISECONDS);
        }
        Map<String, Object> packedAck = packed.take("ack packed-fragments",
                f -> "packed-fragments".equals(f.get("id")));
        check("a MessagePack message in 3 binary fragments is acked", "ack".equals(type(packedAck)),
                packedAck);
        List<Map<String, Object>> seen = viewer.takeEvents(3);
        check("the viewer gets the three, whole", seqs(seen).equals(List.of(1L, 2L, 3L))
                && "p".repeat(3000).equals(map(seen.get(2).get("event")).get("content")),
                seqs(seen));
        closeAll();
    }

    static boolean awaitPong(Peer peer, String payload) throws InterruptedException {
        long deadline = System.currentTimeMillis() + WAIT_MS;
        while (!peer.pongs.contains(payload) && System.currentTimeMillis() < deadline) {
            Thread.sleep(10);
        }
        return peer.pongs.contains(payload);
    }

    static void sessionByteCap() throws Exception {
        // The server runs with --max-session-bytes 2097152: a third 800 kB event passes it.
        String id = sid("cap");
        Peer publisher = Peer.open(streamPath(id));
        publisher.hello(obj("create", true));
        List<Object> answers = new ArrayList<>();
        for (int i = 0; i < 3; i++) {
            answers.add(publisher.call(obj("type", "event", "id", "cap" + i,
                    "event", obj("type", "token", "content", "c".repeat(800_000)))));
        }
        check("the first two 800 kB events are acked", "ack".equals(type(map(answers.get(0))))
                && "ack".equals(type(map(answers.get(1)))), summary(answers));
        checkError("an event past the session's byte cap", map(answers.get(2)), "too_large");
        Map<String, Object> log = publisher.call(obj("type", "events", "after_seq", 2));
        check("and it stored nothing", list(log.get("events")).isEmpty()
                && num(log.get("last_seq")) == 2, summary(log));
        check("the connection stays open", "pong".equals(type(publisher.call(obj("type", "ping")))),
                "");
        closeAll();
    }

    static void oddPayloads() throws Exception {
        String id = sid("odd");
        Peer viewer = Peer.open(streamPath(id));
        viewer.hello(obj("create", true));
        Peer peer = Peer.open(streamPath(id));
        peer.hello(obj());
        peer.sendText("{\"type\": \"event\", \"id\": \"lone\", \"event\": "
                + "{\"type\": \"token\", \"content\": \"a\\ud800b\"}}");
        Map<String, Object> lone = peer.take("answer lone", f -> "lone".equals(f.get("id"))
                || "error".equals(type(f)));
        check("a token whose content escapes a lone surrogate (\\ud800) gets an ack or error "
                + "bad_request", "ack".equals(type(lone)) || "bad_request".equals(lone.get("code")),
                lone);
        note("a token whose content escapes a lone surrogate (\\ud800): " + summary(lone));
        if ("ack".equals(type(lone))) {
            Map<String, Object> seen = viewer.takeType("event");
            check("an accepted lone surrogate reaches the viewer as a decodable frame",
                    seen.get("event") instanceof Map, seen);
        }
        StringBuilder deep = new StringBuilder();
        for (int i = 0; i < 5000; i++) {
            deep.append('[');
        }
        for (int i = 0; i < 5000; i++) {
            deep.append(']');
        }
        peer.sendText("{\"type\": \"event\", \"id\": \"deep\", \"event\": {\"type\": "
                + "\"custom\", \"name\": \"deep\", \"data\": " + deep + "}}");
        Map<String, Object> nested = peer.take("answer deep", f -> "deep".equals(f.get("id"))
                || "error".equals(type(f)));
        check("custom data nested 5000 deep gets an ack or an error, not a dropped connection",
                Set.of("ack", "error").contains(type(nested)), nested);
        note("custom data nested 5000 deep: " + summary(nested));
        if ("ack".equals(type(nested))) {
            check("and an accepted one reaches the viewer", "custom".equals(map(viewer.takeType(
                    "event").get("event")).get("type")), "");
        }
        for (String key : List.of("\u00e9".repeat(128), "\ud83c\udf8b".repeat(128),
                "\ud83c\udf8b".repeat(65))) {
            Map<String, Object> answer = peer.call(obj("type", "event",
                    "event", obj("type", "token", "content", "key"), "key", key));
            String shown = key.codePointCount(0, key.length()) + " code points, " + key.length()
                    + " UTF-16 units, " + key.getBytes(StandardCharsets.UTF_8).length + " bytes";
            if (key.codePointCount(0, key.length()) <= 128) {
                check("a key of " + shown + " is accepted (at most 128 characters)",
                        "ack".equals(type(answer)), answer);
            }
        }
        Map<String, Object> nullKey = peer.call(obj("type", "event",
                "event", obj("type", "token", "content", "null key"), "key", null));
        note("an event whose key is null: " + summary(nullKey));
        Map<String, Object> emptyKey = peer.call(obj("type", "event",
                "event", obj("type", "token", "content", "empty key"), "key", ""));
        note("an event whose key is the empty string: " + summary(emptyKey));
        Map<String, Object> noData = peer.call(obj("type", "event",
                "event", obj("type", "custom", "name", "no data")));
        note("a custom event without data: " + summary(noData));
        Map<String, Object> extraField = peer.call(obj("type", "event",
                "event", obj("type", "token", "content", "x", "x_future", 1)));
        check("a token event with an unknown field is accepted", "ack".equals(type(extraField)),
                extraField);
        peer.call(obj("type", "ping"));
        Map<String, Object> forwarded = viewer.take("the event with x_future",
                f -> "event".equals(type(f)) && Objects.equals(f.get("seq"),
                extraField.get("seq")));
        note("viewers get that event " + (map(forwarded.get("event")).containsKey("x_future")
                ? "with" : "without") + " the unknown field");
        closeAll();
    }

    static void sharedKeys() throws Exception {
        String id = sid("shared-keys");
        Peer peer = Peer.open(streamPath(id));
        peer.hello(obj("create", true));
        Map<String, Object> event = peer.call(obj("type", "event", "key", "both",
                "event", obj("type", "token", "content", "first")));
        Map<String, Object> message = peer.call(obj("type", "message", "key", "both",
                "message", obj("role", "user", "content", "second",
                        "created_at", "2025-01-02T03:04:05Z")));
        check("a message whose key an event already used is a duplicate of that event",
                Boolean.TRUE.equals(message.get("duplicate"))
                && Objects.equals(event.get("seq"), message.get("seq")), message);
        Map<String, Object> history = peer.call(obj("type", "history"));
        check("and is not added to history", list(history.get("messages")).isEmpty(),
                summary(history));
        closeAll();
    }

    static void concurrentCreate() throws Exception {
        String id = sid("race");
        List<Peer> peers = new ArrayList<>();
        for (int i = 0; i < 6; i++) {
            peers.add(Peer.open(streamPath(id)));
        }
        for (Peer peer : peers) {
            peer.sendText(Json.write(obj("type", "hello", "create", true, "title", "race")));
        }
        Set<Object> created = new HashSet<>();
        Set<Object> epochs = new HashSet<>();
        for (Peer peer : peers) {
            Map<String, Object> welcome = peer.takeType("welcome");
            created.add(map(welcome.get("session")).get("created_at"));
            epochs.add(welcome.get("epoch"));
        }
        check("six connections creating one session at once all get it, one created_at and "
                + "one epoch", created.size() == 1 && epochs.size() == 1, created + " " + epochs);
        Map<String, Object> metadata = map(map(get("/api/v1/sessions/" + id, null).json())
                .get("metadata"));
        check("and it counts six connections", num(metadata.get("connections")) == 6, metadata);
        closeAll();
    }

    static void packedWidths() throws Exception {
        Peer peer = Peer.open(streamPath(sid("widths")), MSGPACK);
        peer.hello(obj("create", true));
        Map<String, byte[]> ids = new LinkedHashMap<>();
        ids.put("uint8 200", new byte[] {(byte) 0xcc, (byte) 200});
        ids.put("uint16 60000", new byte[] {(byte) 0xcd, (byte) 0xea, 0x60});
        ids.put("uint32 4000000000", new byte[] {(byte) 0xce, (byte) 0xee, 0x6b, 0x28, 0x00});
        ids.put("uint64 2^40", new byte[] {(byte) 0xcf, 0, 0, 1, 0, 0, 0, 0, 0});
        ids.put("int8 -100", new byte[] {(byte) 0xd0, (byte) -100});
        ids.put("int16 -30000", new byte[] {(byte) 0xd1, (byte) 0x8a, (byte) 0xd0});
        ids.put("positive fixint 5 as int64", new byte[] {(byte) 0xd3, 0, 0, 0, 0, 0, 0, 0, 5});
        ids.put("str8 \"s8\"", new byte[] {(byte) 0xd9, 2, 's', '8'});
        ids.put("str16 \"s16\"", new byte[] {(byte) 0xda, 0, 3, 's', '1', '6'});
        ids.put("str32 \"s32\"", new byte[] {(byte) 0xdb, 0, 0, 0, 3, 's', '3', '2'});
        for (Map.Entry<String, byte[]> id : ids.entrySet()) {
            Object expected = MsgPack.unpack(id.getValue());
            ByteArrayOutputStream frame = new ByteArrayOutputStream();
            frame.write(0x82);
            frame.writeBytes(MsgPack.pack("type"));
            frame.writeBytes(MsgPack.pack("ping"));
            frame.writeBytes(MsgPack.pack("id"));
            frame.writeBytes(id.getValue());
            peer.sendBinary(frame.toByteArray());
            Map<String, Object> answer = peer.take("pong " + id.getKey(),
                    f -> Set.of("pong", "error").contains(type(f)));
            check("over MessagePack an id encoded as " + id.getKey() + " is echoed",
                    "pong".equals(type(answer)) && Objects.equals(expected, answer.get("id")),
                    answer);
        }
        ByteArrayOutputStream wide = new ByteArrayOutputStream();
        wide.writeBytes(new byte[] {(byte) 0xde, 0, 2});  // map16
        wide.writeBytes(new byte[] {(byte) 0xd9, 4, 't', 'y', 'p', 'e'});
        wide.writeBytes(new byte[] {(byte) 0xd9, 4, 'p', 'i', 'n', 'g'});
        wide.writeBytes(MsgPack.pack("id"));
        wide.writeBytes(new byte[] {(byte) 0xda, 0, 4, 'w', 'i', 'd', 'e'});
        peer.sendBinary(wide.toByteArray());
        Map<String, Object> wideAnswer = peer.take("pong wide", f -> "wide".equals(f.get("id")));
        check("a map16 with str8 keys is read like a fixmap", "pong".equals(type(wideAnswer)),
                wideAnswer);
        ByteArrayOutputStream float32 = new ByteArrayOutputStream();
        float32.write(0x83);
        for (Object part : List.of("type", "event", "id", "f32", "event")) {
            float32.writeBytes(MsgPack.pack(part));
        }
        float32.write(0x83);
        for (Object part : List.of("type", "custom", "name", "f32", "data")) {
            float32.writeBytes(MsgPack.pack(part));
        }
        float32.writeBytes(new byte[] {(byte) 0xca, 0x40, 0x20, 0, 0});  // 2.5f
        peer.sendBinary(float32.toByteArray());
        Map<String, Object> floatAck = peer.take("ack f32", f -> "f32".equals(f.get("id")));
        check("a float32 in custom data is accepted", "ack".equals(type(floatAck)), floatAck);
        Map<String, byte[]> bad = new LinkedHashMap<>();
        bad.put("an id of uint64 2^64-1", new byte[] {(byte) 0xcf, -1, -1, -1, -1, -1, -1, -1, -1});
        bad.put("an id in bin8", new byte[] {(byte) 0xc4, 2, 'b', 'n'});
        bad.put("an id that is an ext timestamp", new byte[] {(byte) 0xd6, -1, 0, 0, 0, 1});
        bad.put("an id of invalid UTF-8", new byte[] {(byte) 0xa2, (byte) 0xc3, 0x28});
        for (Map.Entry<String, byte[]> entry : bad.entrySet()) {
            ByteArrayOutputStream frame = new ByteArrayOutputStream();
            frame.write(0x82);
            frame.writeBytes(MsgPack.pack("type"));
            frame.writeBytes(MsgPack.pack("ping"));
            frame.writeBytes(MsgPack.pack("id"));
            frame.writeBytes(entry.getValue());
            peer.sendBinary(frame.toByteArray());
            Map<String, Object> answer = peer.take("answer to " + entry.getKey(), f -> true);
            check("over MessagePack, a ping with " + entry.getKey() + " gets error bad_request",
                    "error".equals(type(answer)) && "bad_request".equals(answer.get("code")),
                    answer);
        }
        byte[] intKeys = {(byte) 0x82, (byte) 0xa4, 't', 'y', 'p', 'e', (byte) 0xa4, 'p', 'i', 'n',
                'g', 0x01, 0x02};
        peer.sendBinary(intKeys);
        Map<String, Object> intKeyAnswer = peer.take("answer to an integer key", f -> true);
        note("over MessagePack, a ping with an extra integer key: " + summary(intKeyAnswer));
        check("the connection is still open", "pong".equals(type(peer.call(obj("type", "ping")))),
                "");
        closeAll();
    }

    static void textAndBinary() throws Exception {
        String id = sid("kinds");
        Peer json = Peer.open(streamPath(id), JSON);
        json.hello(obj("create", true));
        json.sendBinary(Json.write(obj("type", "ping", "id",
                "bin")).getBytes(StandardCharsets.UTF_8));
        Object answer = json.nextOrClose();
        note("a binary frame holding JSON on a bamboo.v1 connection: " + describeOutcome(answer));
        Peer packed = Peer.open(streamPath(id), MSGPACK);
        packed.hello(obj());
        packed.sendText(Json.write(obj("type", "ping", "id", "txt")));
        Object packedAnswer = packed.nextOrClose();
        note("a text frame holding JSON on a bamboo.v1.msgpack connection: "
                + describeOutcome(packedAnswer));
        closeAll();
    }

    static String describeOutcome(Object outcome) {
        if (outcome instanceof Closed closed) {
            return "closed " + closed;
        }
        return outcome instanceof Map<?, ?> frame ? "answered " + summary(frame) : "nothing";
    }

    static void messagePack() throws Exception {
        String id = sid("msgpack");
        Peer json = Peer.open(streamPath(id), JSON);
        json.hello(obj("create", true));
        Peer packed = Peer.open(streamPath(id), MSGPACK);
        Map<String, Object> welcome = packed.hello(obj("role", "agent"));
        checkSessionMetadata(map(welcome.get("session")), id, "the MessagePack welcome.session");
        json.takeType("presence");
        Map<String, Object> fromPacked = obj("type", "custom", "name", "packed",
                "data", obj("n", 1, "big", 5_000_000_000L, "neg", -300, "f", 2.5,
                        "s", "\u00fcnicode", "l", list(true, false, null)));
        Map<String, Object> ack = packed.call(obj("type", "event", "id", 9, "event", fromPacked,
                "key", "pk"));
        check("a MessagePack event is acked in MessagePack with the integer id",
                Long.valueOf(9).equals(ack.get("id")) && Long.valueOf(1).equals(ack.get("seq")),
                ack);
        Map<String, Object> seenByJson = json.takeType("event");
        check("a JSON viewer sees the MessagePack publisher's event as published",
                covers(fromPacked, seenByJson.get("event")), seenByJson);
        Map<String, Object> fromJson = obj("type", "token", "content", "to msgpack \ud83c\udf8b");
        json.call(obj("type", "event", "event", fromJson));
        Map<String, Object> seenByPacked = packed.takeType("event");
        check("a MessagePack viewer sees the JSON publisher's event as published, with seq and ts",
                covers(fromJson, seenByPacked.get("event"))
                && Long.valueOf(2).equals(seenByPacked.get("seq"))
                && isTime(seenByPacked.get("ts")),
                seenByPacked);
        Map<String, Object> dup = packed.call(obj("type", "event", "event", fromPacked, "key",
                "pk"));
        check("a duplicate key over MessagePack is acked duplicate true",
                Boolean.TRUE.equals(dup.get("duplicate")) && Long.valueOf(1).equals(dup.get("seq")),
                dup);
        Map<String, Object> events = packed.call(obj("type", "events"));
        check("events over MessagePack returns both", seqsOf(list(events.get("events")))
                .equals(List.of(1L, 2L)), summary(events));
        Peer packedFirst = Peer.open(streamPath(id), MSGPACK);
        packedFirst.send(obj("type", "ping", "id", 1));
        Closed refused = packedFirst.awaitClose(WAIT_MS);
        List<Map<String, Object>> refusals = packedFirst.heldOfType("error");
        check("over MessagePack, a first frame that is not hello gets error bad_request (in a "
                + "binary frame), then close 1008", refused.code == 1008 && refusals.size() == 1
                && "bad_request".equals(refusals.get(0).get("code"))
                && packedFirst.textMessages.get() == 0, refused + " after " + summary(refusals));
        packed.sendBinary(new byte[] {(byte) 0xc1, 0x00, 0x13});
        Map<String, Object> error = packed.takeType("error");
        check("a binary frame that is not MessagePack gets error bad_request in MessagePack",
                "bad_request".equals(error.get("code")), error);
        Map<String, Object> badType = packed.call(obj("type", "event", "event",
                obj("type", "token", "content", 5)));
        checkError("over MessagePack, a token whose content is a number", badType, "bad_request");
        check("every frame the server sent on bamboo.v1.msgpack was binary",
                packed.textMessages.get() == 0, packed.frameCounts());
        closeAll();
    }

    static void webSocketPingPong() throws Exception {
        Peer peer = Peer.open(streamPath(sid("wsping")));
        peer.hello(obj("create", true));
        peer.ws.sendPing(ByteBuffer.wrap("jdk-ping".getBytes(StandardCharsets.UTF_8)))
                .get(WAIT_MS, TimeUnit.MILLISECONDS);
        check("a WebSocket ping from the JDK is answered with a pong of the same payload",
                awaitPong(peer, "jdk-ping"), peer.pongs);
        peer.ws.sendPong(ByteBuffer.wrap("unsolicited".getBytes(StandardCharsets.UTF_8)))
                .get(WAIT_MS, TimeUnit.MILLISECONDS);
        check("an unsolicited pong is ignored: the connection still answers",
                "pong".equals(type(peer.call(obj("type", "ping")))), "");
        closeAll();
    }

    static void closeHandshake() throws Exception {
        String id = sid("closes");
        Peer watcher = Peer.open(streamPath(id));
        watcher.hello(obj("create", true));
        Peer leaver = Peer.open(streamPath(id));
        String leaverId = (String) leaver.hello(obj()).get("connection_id");
        watcher.takeType("presence");
        leaver.ws.sendClose(WebSocket.NORMAL_CLOSURE, "done").get(WAIT_MS, TimeUnit.MILLISECONDS);
        Closed echoed = leaver.awaitClose(WAIT_MS);
        check("a client close 1000 is answered with close 1000 (the JDK's close handshake)",
                echoed.code == 1000, echoed);
        check("and the JDK reports both directions closed",
                leaver.ws.isInputClosed() && leaver.ws.isOutputClosed(), "");
        Map<String, Object> left = watcher.takeType("presence");
        check("the others see it leave", leaverId.equals(left.get("left")), left);
        Peer going = Peer.open(streamPath(id));
        going.hello(obj());
        going.ws.sendClose(4000, "app reason").get(WAIT_MS, TimeUnit.MILLISECONDS);
        Closed other = going.awaitClose(WAIT_MS);
        note("a client close with the application code 4000 is answered with " + other);
        check("the session is still open to others after clients close",
                "pong".equals(type(watcher.call(obj("type", "ping")))), "");
        closeAll();
    }

    // ---------------------------------------------------------------- HTTP

    static void httpEndpoints() throws Exception {
        Answer health = get("/healthz", null);
        check("GET /healthz is 200", health.status == 200, health);
        Answer ready = get("/readyz", null);
        check("GET /readyz is 200", ready.status == 200, ready);
        Answer metrics = get("/metrics", null);
        List<String> malformed = new ArrayList<>();
        // name{label="value",...} value [timestamp], as the text exposition format has it
        Pattern sample = Pattern.compile("[a-zA-Z_:][a-zA-Z0-9_:]*"
                + "(\\{([a-zA-Z_][a-zA-Z0-9_]*=\"([^\"\\\\\\n]|\\\\[\\\\\"n])*\",?)*\\})?"
                + " (-?[0-9.eE+-]+|[+-]Inf|NaN)( -?[0-9]+)?");
        for (String line : metrics.body.split("\n")) {
            if (!line.isEmpty() && !line.startsWith("#") && !sample.matcher(line).matches()) {
                malformed.add(line);
            }
        }
        check("every sample line of /metrics is well-formed Prometheus text", malformed.isEmpty(),
                malformed);
        check("GET /metrics is 200 Prometheus text", metrics.status == 200
                && metrics.contentType.startsWith("text/plain")
                && Pattern.compile("(?m)^# TYPE \\w+ \\w+$").matcher(metrics.body).find()
                && Pattern.compile("(?m)^[a-zA-Z_:][\\w:]*(\\{[^}]*\\})? \\S+$")
                        .matcher(metrics.body).find(), metrics.status + " " + metrics.contentType);

        String user = runPrefix + "-lister";
        List<String> ids = new ArrayList<>();
        List<Peer> owners = new ArrayList<>();  // attached till the end: their sessions are active
        for (String title : List.of("alpha one", "beta two", "alpha three")) {
            String id = sid("list-" + title.replace(' ', '-'));
            Peer peer = Peer.open(streamPath(id));
            peer.hello(obj("create", true, "user_id", user, "title", title));
            for (int i = 0; i < ids.size(); i++) {
                peer.call(obj("type", "message", "message", obj("role", "user", "content", "m",
                        "created_at", "2025-01-02T03:04:05Z")));
            }
            ids.add(id);
            owners.add(peer);
        }
        Answer listing = get("/api/v1/sessions?user_id=" + user, null);
        Map<String, Object> body = map(listing.json());
        check("the listing by user_id answers {sessions, total, offset, limit} with the 3",
                listing.status == 200 && num(body.get("total")) == 3
                && list(body.get("sessions")).size() == 3 && body.get("offset") instanceof Long
                && body.get("limit") instanceof Long, listing);
        check("the listing's sessions are SessionMetadata", list(body.get("sessions")).stream()
                .allMatch(s -> user.equals(map(s).get("user_id")) && map(s).containsKey("epoch")),
                listing);
        List<Object> newest = idsOf(get("/api/v1/sessions?user_id=" + user
                + "&sort_by=created_at", null));
        check("sort_order defaults to desc: newest first", newest.equals(List.of(ids.get(2),
                ids.get(1), ids.get(0))), newest);
        List<Object> oldest = idsOf(get("/api/v1/sessions?user_id=" + user
                + "&sort_by=created_at&sort_order=asc", null));
        check("sort_by created_at sort_order asc: oldest first", oldest.equals(ids), oldest);
        List<Object> byCount = idsOf(get("/api/v1/sessions?user_id=" + user
                + "&sort_by=message_count&sort_order=desc", null));
        check("sort_by message_count desc", byCount.equals(List.of(ids.get(2), ids.get(1),
                ids.get(0))), byCount);
        List<Object> alpha = idsOf(get("/api/v1/sessions?user_id=" + user
                + "&title_contains=alpha&sort_by=created_at&sort_order=asc", null));
        check("title_contains filters", alpha.equals(List.of(ids.get(0), ids.get(2))), alpha);
        Answer paged = get("/api/v1/sessions?user_id=" + user
                + "&sort_by=created_at&sort_order=asc&limit=1&offset=1", null);
        Map<String, Object> page = map(paged.json());
        check("limit 1 offset 1 gives the second, total 3, and echoes offset and limit",
                idsOf(paged).equals(List.of(ids.get(1))) && num(page.get("total")) == 3
                && num(page.get("offset")) == 1 && num(page.get("limit")) == 1, paged);
        owners.get(0).send(obj("type", "state", "state", "closed"));
        owners.get(0).awaitClose(WAIT_MS);
        List<Object> activeOnes = idsOf(get("/api/v1/sessions?user_id=" + user
                + "&state=active&sort_by=created_at&sort_order=asc", null));
        List<Object> closedOnes = idsOf(get("/api/v1/sessions?user_id=" + user + "&state=closed",
                null));
        check("state filters: active, and closed (once closed)", activeOnes.equals(ids.subList(1,
                3))
                && closedOnes.equals(ids.subList(0, 1)), activeOnes + " " + closedOnes);
        String later = Instant.now().plusSeconds(3600).toString();
        List<Object> future = idsOf(get("/api/v1/sessions?user_id=" + user + "&created_after="
                + later, null));
        List<Object> past = idsOf(get("/api/v1/sessions?user_id=" + user + "&created_before="
                + later + "&active_after=2000-01-01T00:00:00Z", null));
        check("created_after, created_before, active_after filter by time",
                future.isEmpty() && past.size() == 3, future + " " + past);
        for (String sort : List.of("updated_at", "last_activity_at")) {
            Answer sorted = get("/api/v1/sessions?user_id=" + user + "&sort_by=" + sort, null);
            check("sort_by " + sort + " is accepted", sorted.status == 200
                    && idsOf(sorted).size() == 3, sorted);
        }
        List<Object> spaced = idsOf(get("/api/v1/sessions?user_id=" + user
                + "&title_contains=alpha%20three", null));
        check("title_contains=alpha%20three (a percent-encoded space) finds that one",
                spaced.equals(List.of(ids.get(2))), spaced);
        List<Object> plussed = idsOf(get("/api/v1/sessions?user_id=" + user
                + "&title_contains=alpha+three", null));
        note("title_contains=alpha+three (a form-encoded space) finds " + plussed.size());
        String offset = OffsetDateTime.now().minusHours(1).withOffsetSameInstant(
                java.time.ZoneOffset.ofHours(2)).toString();
        List<Object> afterOffset = idsOf(get("/api/v1/sessions?user_id=" + user + "&created_after="
                + offset.replace("+", "%2B"), null));
        check("created_after with a +02:00 offset (RFC 3339) is read as that instant",
                afterOffset.size() == 3, offset + " " + afterOffset);
        Answer badTime = get("/api/v1/sessions?created_after=yesterday", null);
        note("a listing with created_after=yesterday: HTTP " + badTime.status);
        Answer badLimit = get("/api/v1/sessions?limit=ten", null);
        note("a listing with limit=ten: HTTP " + badLimit.status);
        Answer badSort = get("/api/v1/sessions?sort_by=title", null);
        note("a listing with sort_by=title (not one of the four): HTTP " + badSort.status);

        Answer one = get("/api/v1/sessions/" + ids.get(2), null);
        Map<String, Object> oneBody = map(one.json());
        check("GET /api/v1/sessions/{id} answers {metadata, messages}", one.status == 200
                && ids.get(2).equals(map(oneBody.get("metadata")).get("id"))
                && list(oneBody.get("messages")).size() == 2, one);
        checkSessionMetadata(map(oneBody.get("metadata")), ids.get(2), "HTTP metadata");
        String eventsId = sid("http-events");
        Peer publisher = Peer.open(streamPath(eventsId));
        publisher.hello(obj("create", true));
        publishTokens(publisher, 1, 6);
        Answer events = get("/api/v1/sessions/" + eventsId + "/events?after_seq=2&limit=3", null);
        Map<String, Object> eventsBody = map(events.json());
        check("GET .../events?after_seq=2&limit=3 answers events 3..5 and a last_seq",
                events.status == 200 && seqsOf(list(eventsBody.get("events")))
                        .equals(List.of(3L, 4L, 5L)) && eventsBody.get("last_seq") instanceof Long,
                events);
        Answer missing = get("/api/v1/sessions/" + sid("nobody"), null);
        check("GET of a missing session is 404", missing.status == 404, missing);
        Answer missingEvents = get("/api/v1/sessions/" + sid("nobody") + "/events", null);
        check("GET of a missing session's events is 404", missingEvents.status == 404,
                missingEvents);
        HttpResponse<String> posted = http.send(HttpRequest.newBuilder(
                URI.create(httpBase + "/api/v1/sessions")).POST(HttpRequest.BodyPublishers
                .ofString("{}")).timeout(Duration.ofMillis(WAIT_MS)).build(),
                HttpResponse.BodyHandlers.ofString());
        check("POST is refused (GET only)", posted.statusCode() >= 400, posted.statusCode());
        note("POST /api/v1/sessions answers HTTP " + posted.statusCode());
        HttpClient defaults = HttpClient.newHttpClient();  // prefers HTTP/2: asks for h2c
        HttpResponse<String> upgraded = defaults.send(HttpRequest.newBuilder(
                URI.create(httpBase + "/api/v1/sessions/" + ids.get(0)))
                .timeout(Duration.ofMillis(WAIT_MS)).build(), HttpResponse.BodyHandlers.ofString());
        check("the JDK's default HttpClient (which offers an h2c upgrade) gets the session",
                upgraded.statusCode() == 200 && upgraded.body().contains(ids.get(0)),
                upgraded.statusCode() + " " + upgraded.version());
        closeAll();
    }

    static List<Object> idsOf(Answer answer) {
        List<Object> ids = new ArrayList<>();
        for (Object session : list(map(answer.json()).get("sessions"))) {
            ids.add(map(session).get("id"));
        }
        return ids;
    }

    // ---------------------------------------------------------------- restart modes

    /** Publishes with keys, holds three connections, says READY, and reads the closes. */
    static void beforeRestart(Path state) throws Exception {
        String id = sid("restart");
        Peer publisher = Peer.open(streamPath(id));
        String epoch = (String) publisher.hello(obj("create", true, "role", "agent")).get("epoch");
        Peer viewer = Peer.open(streamPath(id), JSON);
        viewer.hello(obj());
        Peer packed = Peer.open(streamPath(id), MSGPACK);
        packed.hello(obj());
        for (int i = 1; i <= 3; i++) {
            publisher.call(obj("type", "event", "event", obj("type", "token", "content", "r" + i),
                    "key", "rk" + i));
        }
        publisher.call(obj("type", "message", "key", "rm", "message", obj("role", "user",
                "content", "before the restart", "created_at", "2025-01-02T03:04:05Z")));
        viewer.takeEvents(4);
        packed.takeEvents(4);
        Files.writeString(state, Json.write(obj("session", id, "epoch", epoch, "last_seq", 4)));
        System.out.println("READY");
        System.out.flush();
        for (Peer peer : List.of(publisher, viewer, packed)) {
            Closed closed = peer.awaitClose(30_000);
            check("a server shutting down closes " + (peer == packed ? "a MessagePack" : "a JSON")
                    + " connection with 1001 or 1012", closed.code == 1001 || closed.code == 1012,
                    closed);
            note("the shutdown's close: " + closed);
        }
    }

    /** On the server started again: the epoch, the log, the keys and resume held. */
    static void afterRestart(Path state) throws Exception {
        Map<String, Object> saved = map(Json.parse(Files.readString(state)));
        String id = (String) saved.get("session");
        section("after restart", () -> {
            Peer viewer = Peer.open(streamPath(id));
            Map<String, Object> welcome = viewer.hello(obj("last_seq", 2,
                    "epoch", saved.get("epoch")));
            check("after a restart the epoch is the same and last_seq 4",
                    saved.get("epoch").equals(welcome.get("epoch"))
                    && num(welcome.get("last_seq")) == 4, welcome);
            check("resuming from seq 2 across the restart: resumed, replay 2",
                    Boolean.TRUE.equals(welcome.get("resumed")) && num(welcome.get("replay")) == 2,
                    welcome);
            List<Map<String, Object>> replayed = viewer.takeEvents(2);
            check("the replay is seq 3 (token r3) and 4 (the message)",
                    seqs(replayed).equals(List.of(3L, 4L))
                    && "r3".equals(map(replayed.get(0).get("event")).get("content"))
                    && "message".equals(map(replayed.get(1).get("event")).get("type")),
                    summary(replayed));
            Peer publisher = Peer.open(streamPath(id));
            publisher.hello(obj("role", "agent"));
            Map<String, Object> retried = publisher.call(obj("type", "event",
                    "event", obj("type", "token", "content", "r1"), "key", "rk1"));
            check("a key from before the restart is still a duplicate",
                    Boolean.TRUE.equals(retried.get("duplicate"))
                    && Long.valueOf(1).equals(retried.get("seq")), retried);
            Map<String, Object> message = publisher.call(obj("type", "message", "key", "rm",
                    "message", obj("role", "user", "content", "before the restart",
                            "created_at", "2025-01-02T03:04:05Z")));
            check("a message key from before the restart is still a duplicate",
                    Boolean.TRUE.equals(message.get("duplicate"))
                    && Long.valueOf(4).equals(message.get("seq")), message);
            Map<String, Object> fresh = publisher.call(obj("type", "event",
                    "event", obj("type", "token", "content", "r5"), "key", "rk5"));
            check("a new event after the restart gets seq 5",
                    Long.valueOf(5).equals(fresh.get("seq")),
                    fresh);
            check("and reaches the resumed viewer live",
                    num(viewer.takeType("event").get("seq")) == 5,
                    "");
            Map<String, Object> history = viewer.call(obj("type", "history"));
            check("the history holds the one message", list(history.get("messages")).size() == 1,
                    summary(history));
            closeAll();
        });
    }

    // ---------------------------------------------------------------- auth mode

    static void authMode(String secret) throws Exception {
        if (secret == null || secret.isEmpty()) {
            throw new IllegalStateException("auth mode needs SECRET in the environment");
        }
        Jwt jwt = new Jwt(secret);
        String alice = runPrefix + "-alice";
        String bob = runPrefix + "-bob";
        String aliceToken = jwt.token(alice, 300, null, null);
        String aliceSession = sid("alice");
        String aliceOther = sid("alice-other");
        section("auth refusals", () -> {
            Map<String, String> tokens = new LinkedHashMap<>();
            tokens.put("no token", null);
            tokens.put("a token signed with another secret",
                    new Jwt(secret + "-other").token(alice, 300, null, null));
            tokens.put("an expired token", jwt.token(alice, -3600, null, null));
            tokens.put("a token with alg none", Jwt.unsigned(alice));
            tokens.put("a token that is not a JWT", "not-a-jwt");
            tokens.put("a token without sub", jwt.sign(obj("exp", Instant.now().getEpochSecond()
                    + 300)));
            tokens.put("a token without exp", jwt.sign(obj("sub", alice)));
            for (Map.Entry<String, String> entry : tokens.entrySet()) {
                Peer peer = Peer.open(streamPath(aliceSession));
                Map<String, Object> hello = obj("create", true);
                if (entry.getValue() != null) {
                    hello.put("token", entry.getValue());
                }
                Closed closed = peer.helloRefused(hello);
                check("a hello with " + entry.getKey() + " closes 4401", closed.code == 4401,
                        closed);
                noteErrors("a hello with " + entry.getKey(), peer);
            }
        });
        section("auth ownership", () -> {
            Peer owner = Peer.open(streamPath(aliceSession));
            Map<String, Object> session = map(owner.hello(obj("create", true, "token", aliceToken,
                    "user_id", "mallory")).get("session"));
            check("a session created under a token belongs to its sub, not hello.user_id",
                    alice.equals(session.get("user_id")), session.get("user_id"));
            Peer header = Peer.openWith(streamPath(aliceSession),
                    Map.of("Authorization", "Bearer " + aliceToken));
            Map<String, Object> viaHeader = header.hello(obj());
            check("a token as Authorization: Bearer on the upgrade is accepted",
                    "welcome".equals(type(viaHeader)), viaHeader);
            Peer other = Peer.open(streamPath(aliceSession));
            Closed refused = other.helloRefused(obj("token", jwt.token(bob, 300, null, null)));
            check("another user's token on alice's session closes 4403", refused.code == 4403,
                    refused);
            noteErrors("another user's hello", other);
            Peer scoped = Peer.open(streamPath(aliceOther));
            Closed wrongSid = scoped.helloRefused(obj("create", true,
                    "token", jwt.token(alice, 300, null, aliceSession)));
            check("a token with sid of one session cannot attach to (or create) another: 4403",
                    wrongSid.code == 4403, wrongSid);
            Peer rightSid = Peer.open(streamPath(aliceSession));
            Map<String, Object> sidWelcome = rightSid.hello(obj("token",
                    jwt.token(alice, 300, null, aliceSession)));
            check("a token with sid attaches to that session", "welcome".equals(type(sidWelcome)),
                    sidWelcome);
            Peer admin = Peer.open(streamPath(aliceSession));
            Map<String, Object> adminWelcome = admin.hello(obj("token",
                    jwt.token(runPrefix + "-root", 300, "admin", null)));
            check("an admin token attaches to anyone's session",
                    "welcome".equals(type(adminWelcome)),
                    adminWelcome);
            Peer agent = Peer.open(streamPath(aliceSession));
            Map<String, Object> agentWelcome = agent.hello(obj("role", "agent",
                    "token", jwt.token(alice, 300, "agent", null)));
            check("a token with role agent for the owner attaches", "welcome".equals(
                    type(agentWelcome)), agentWelcome);
            Map<String, Object> ack = agent.call(obj("type", "event",
                    "event", obj("type", "token", "content", "authorized")));
            check("and publishes", "ack".equals(type(ack)), ack);
            Peer bobs = Peer.open("/api/v1/stream");
            Map<String, Object> bobSession = map(bobs.hello(obj("token",
                    jwt.token(bob, 300, null, null))).get("session"));
            check("/api/v1/stream under bob's token makes a session of bob's",
                    bob.equals(bobSession.get("user_id")), bobSession);
            closeAll();
        });
        section("auth http", () -> {
            String path = "/api/v1/sessions/" + aliceSession;
            Answer anonymous = get(path, null);
            check("HTTP without a token is 401", anonymous.status == 401, anonymous);
            Answer badToken = get(path, "not-a-jwt");
            check("HTTP with a bad token is 401", badToken.status == 401, badToken);
            Answer owner = get(path, aliceToken);
            check("HTTP with the owner's token is 200", owner.status == 200, owner);
            Answer other = get(path, jwt.token(bob, 300, null, null));
            check("HTTP with another user's token is 403", other.status == 403, other);
            Answer admin = get(path, jwt.token(runPrefix + "-root", 300, "admin", null));
            check("HTTP with an admin token is 200", admin.status == 200, admin);
            Answer bobEvents = get(path + "/events", jwt.token(bob, 300, null, null));
            check("HTTP events with another user's token is 403", bobEvents.status == 403,
                    bobEvents);
            Answer otherSid = get("/api/v1/sessions/" + aliceOther, jwt.token(alice, 300, null,
                    aliceSession));
            check("HTTP with a token whose sid is another session is 403 (or 404)",
                    otherSid.status == 403 || otherSid.status == 404, otherSid);
            Answer scopedEvents = get(path + "/events", jwt.token(alice, 300, null, aliceSession));
            check("HTTP events with a token whose sid is that session is 200",
                    scopedEvents.status == 200, scopedEvents);
            Answer bobList = get("/api/v1/sessions", jwt.token(bob, 300, null, null));
            List<Object> owners = new ArrayList<>();
            if (bobList.status == 200) {
                for (Object s : list(map(bobList.json()).get("sessions"))) {
                    owners.add(map(s).get("user_id"));
                }
            }
            check("bob's listing shows only bob's sessions", bobList.status == 200
                    && owners.stream().allMatch(bob::equals), bobList.status + " " + owners);
            Answer spying = get("/api/v1/sessions?user_id=" + alice, jwt.token(bob, 300, null,
                    null));
            List<Object> spied = spying.status == 200 ? idsOf(spying) : List.of();
            check("bob's listing filtered by alice's user_id shows none of alice's sessions",
                    spied.isEmpty(), spying.status + " " + spied);
            note("bob's listing filtered by alice's user_id: HTTP " + spying.status);
            Answer health = get("/healthz", null);
            note("GET /healthz without a token under auth: HTTP " + health.status);
        });
        section("token shapes", () -> {
            long exp = Instant.now().getEpochSecond() + 300;
            Map<String, String> accepted = new LinkedHashMap<>();
            accepted.put("a fractional exp (an RFC 7519 NumericDate)",
                    jwt.sign(obj("sub", alice, "exp", exp + 0.5)));
            accepted.put("a header without typ", jwt.sign(obj("alg", "HS256"),
                    obj("sub", alice, "exp", exp)));
            accepted.put("a header with kid", jwt.sign(obj("alg", "HS256", "typ", "JWT",
                    "kid", "k1"), obj("sub", alice, "exp", exp)));
            accepted.put("role user", jwt.token(alice, 300, "user", null));
            accepted.put("an iat in the past", jwt.sign(obj("sub", alice, "exp", exp,
                    "iat", exp - 400)));
            for (Map.Entry<String, String> entry : accepted.entrySet()) {
                Peer peer = Peer.open(streamPath(aliceSession));
                peer.send(obj("type", "hello", "token", entry.getValue()));
                Object answer = peer.nextOrClose();
                check("a token with " + entry.getKey() + " is accepted", answer instanceof Map<?,
                        ?> m
                        && "welcome".equals(m.get("type")), describeOutcome(answer));
            }
            Map<String, String> refused = new LinkedHashMap<>();
            refused.put("alg HS384", jwt.sign(obj("alg", "HS384", "typ", "JWT"),
                    obj("sub", alice, "exp", exp)));
            refused.put("a sub that is a number", jwt.sign(obj("sub", 42, "exp", exp)));
            refused.put("role root (not user, agent or admin)", jwt.token(alice, 300, "root",
                    null));
            for (Map.Entry<String, String> entry : refused.entrySet()) {
                Peer peer = Peer.open(streamPath(aliceSession));
                Closed closed = peer.helloRefused(obj("token", entry.getValue()));
                check("a token with " + entry.getKey() + " closes 4401", closed.code == 4401,
                        closed);
            }
            Peer audience = Peer.open(streamPath(aliceSession));
            audience.send(obj("type", "hello", "token", jwt.sign(obj("sub", alice, "exp", exp,
                    "aud", "bamboo"))));
            note("a token with an aud claim: " + describeOutcome(audience.nextOrClose()));
            for (String scheme : List.of("bearer", "BEARER")) {
                Answer lower = get("/api/v1/sessions/" + aliceSession, null,
                        scheme + " " + aliceToken);
                check("HTTP takes the auth scheme in any case (\"" + scheme + "\", RFC 7235)",
                        lower.status == 200, lower);
                try {
                    Peer peer = Peer.openWith(streamPath(aliceSession),
                            Map.of("Authorization", scheme + " " + aliceToken));
                    peer.send(obj("type", "hello"));
                    Object answer = peer.nextOrClose();
                    check("the upgrade takes the auth scheme in any case (\"" + scheme + "\")",
                            answer instanceof Map<?, ?> m && "welcome".equals(m.get("type")),
                            describeOutcome(answer));
                } catch (Refused status) {
                    check("the upgrade takes the auth scheme in any case (\"" + scheme + "\")",
                            false, "HTTP " + status.status);
                }
            }
            try {
                Peer peer = Peer.openWith(streamPath(aliceSession),
                        Map.of("Authorization", "Bearer not-a-jwt"));
                Closed closed = peer.helloRefused(obj());
                check("a bad token in the upgrade's Authorization closes 4401", closed.code == 4401,
                        closed);
            } catch (Refused status) {
                note("a bad token in the upgrade's Authorization: refused with HTTP "
                        + status.status);
            }
            closeAll();
        });
        section("session limit", () -> sessionLimit(aliceToken));
        section("rate limit", () -> {
            // The server runs with --rate-limit 10 --rate-limit-burst 10
            // --rate-limit-refusals 5: 40 pings at once overrun it.
            Peer peer = Peer.open(streamPath(aliceSession));
            peer.hello(obj("token", aliceToken));
            for (int i = 0; i < 40 && !peer.closed.isDone(); i++) {
                try {
                    peer.send(obj("type", "ping", "id", i));
                } catch (Exception closing) {
                    break;
                }
            }
            Closed closed = peer.awaitClose(WAIT_MS);
            List<Map<String, Object>> errors = peer.heldOfType("error");
            check("pings over the rate limit get error rate_limited with their id",
                    !errors.isEmpty() && errors.stream().allMatch(e ->
                            "rate_limited".equals(e.get("code")) && e.get("id") instanceof Long),
                    summary(errors));
            check("and too many of them close the connection 4429", closed.code == 4429, closed);
            closeAll();
        });
    }

    static void sessionLimit(String token) throws Exception {
        // The server runs with --max-sessions 4: a fifth live session is one too many.
        List<Peer> holders = new ArrayList<>();
        for (int i = 1; i <= 4; i++) {
            holders.add(attachWithBackoff(sid("full-" + i), token));
        }
        check("four sessions attached at once are within the limit", !holders.contains(null),
                "an attach was refused 1013 six times");
        Peer fifth = Peer.open(streamPath(sid("full-5")));
        Closed closed = fifth.helloRefused(obj("create", true, "token", token));
        check("an attach past the session limit closes 1013", closed.code == 1013, closed);
        noteErrors("an attach past the session limit", fifth);
        holders.get(0).close();
        holders.get(0).awaitClose(WAIT_MS);
        check("once a session's last connection left, a retry with backoff gets in",
                attachWithBackoff(sid("full-5"), token) != null, "refused 1013 six times");
        closeAll();
    }

    /**
     * Attached with create, retried on 1013 as PROTOCOL.md says ("reconnect later, with
     * backoff"): sessions whose last connection just left may not be evictable yet.
     * Null when refused six times.
     */
    static Peer attachWithBackoff(String id, String token) throws Exception {
        for (int attempt = 0; attempt < 6; attempt++) {
            Peer peer = Peer.open(streamPath(id));
            peer.send(obj("type", "hello", "create", true, "token", token));
            Object answer = peer.nextOrClose();
            if (answer instanceof Map<?, ?> frame && "welcome".equals(frame.get("type"))) {
                return peer;
            }
            if (!(answer instanceof Closed refused && refused.code == 1013)) {
                throw new Problem("attaching to " + id + ": " + describeOutcome(answer));
            }
            Thread.sleep(50L << attempt);
        }
        return null;
    }

    static final class Jwt {
        final byte[] secret;

        Jwt(String secret) {
            this.secret = secret.getBytes(StandardCharsets.UTF_8);
        }

        String token(String sub, long ttlSeconds, String role, String sid) throws Exception {
            Map<String, Object> claims = obj("sub", sub,
                    "exp", Instant.now().getEpochSecond() + ttlSeconds);
            if (role != null) {
                claims.put("role", role);
            }
            if (sid != null) {
                claims.put("sid", sid);
            }
            return sign(claims);
        }

        String sign(Map<String, Object> claims) throws Exception {
            return sign(obj("alg", "HS256", "typ", "JWT"), claims);
        }

        String sign(Map<String, Object> header, Map<String, Object> claims) throws Exception {
            String unsigned = part(header) + "." + part(claims);
            Mac mac = Mac.getInstance("HmacSHA256");
            mac.init(new SecretKeySpec(secret, "HmacSHA256"));
            byte[] signature = mac.doFinal(unsigned.getBytes(StandardCharsets.US_ASCII));
            return unsigned + "."
                    + Base64.getUrlEncoder().withoutPadding().encodeToString(signature);
        }

        static String unsigned(String sub) {
            return part(obj("alg", "none", "typ", "JWT")) + "."
                    + part(obj("sub", sub, "exp", Instant.now().getEpochSecond() + 300,
                            "role", "admin")) + ".";
        }

        static String part(Map<String, Object> value) {
            return Base64.getUrlEncoder().withoutPadding()
                    .encodeToString(Json.write(value).getBytes(StandardCharsets.UTF_8));
        }
    }

    // ---------------------------------------------------------------- report

    interface Body {
        void run() throws Exception;
    }

    static void section(String name, Body body) {
        try {
            body.run();
        } catch (Throwable problem) {
            check(name + ": ran to its end", false, describe(problem));
            printStack(problem);
            closeAll();
        }
    }

    /** The whole stack of what no check foresaw (a Problem says all in its message),
     *  each line prefixed STACK: its top frame alone did not say where in this file a
     *  ConcurrentModificationException came from. */
    static void printStack(Throwable problem) {
        if (problem instanceof Problem) {
            return;
        }
        StringWriter trace = new StringWriter();
        problem.printStackTrace(new PrintWriter(trace));
        trace.toString().lines().forEach(line -> System.out.println("STACK " + line));
        System.out.flush();
    }

    static boolean check(String what, boolean ok, Object detail) {
        if (ok) {
            heldCount++;
            System.out.println("HELD " + what);
        } else {
            failedCount++;
            System.out.println("FAIL " + what + ": " + abbreviate(String.valueOf(detail)));
        }
        System.out.flush();
        return ok;
    }

    static void note(String text) {
        System.out.println("NOTE " + abbreviate(text));
    }

    static void noteErrors(String what, Peer peer) {
        List<Map<String, Object>> errors = peer.heldOfType("error");
        note(what + ": " + (errors.isEmpty() ? "no error frame before the close"
                : "error frame " + summary(errors)));
    }

    static String describe(Throwable problem) {
        Throwable cause = problem;
        while ((cause instanceof CompletionException || cause instanceof ExecutionException)
                && cause.getCause() != null) {
            cause = cause.getCause();
        }
        if (cause instanceof Problem) {
            return cause.getMessage();
        }
        StackTraceElement[] trace = cause.getStackTrace();
        return cause + (trace.length > 0 ? " at " + trace[0] : "");
    }

    static String abbreviate(String text) {
        return text.length() <= 400 ? text : text.substring(0, 400) + "...";
    }

    static String summary(Object value) {
        return abbreviate(value instanceof Map || value instanceof List ? Json.write(value)
                : String.valueOf(value));
    }

    // ---------------------------------------------------------------- values

    static String sid(String name) {
        return runPrefix + "-" + name;
    }

    static String streamPath(String id) {
        return "/api/v1/stream/" + id;
    }

    static Map<String, Object> obj(Object... keysAndValues) {
        Map<String, Object> result = new LinkedHashMap<>();
        for (int i = 0; i < keysAndValues.length; i += 2) {
            result.put((String) keysAndValues[i], normalize(keysAndValues[i + 1]));
        }
        return result;
    }

    static List<Object> list(Object... items) {
        List<Object> result = new ArrayList<>();
        for (Object item : items) {
            result.add(normalize(item));
        }
        return result;
    }

    static Object normalize(Object value) {
        return value instanceof Integer i ? Long.valueOf(i) : value;
    }

    @SuppressWarnings("unchecked")
    static Map<String, Object> map(Object value) {
        if (!(value instanceof Map)) {
            throw new Problem("expected an object, got " + summary(value));
        }
        return (Map<String, Object>) value;
    }

    @SuppressWarnings("unchecked")
    static List<Object> list(Object value) {
        if (!(value instanceof List)) {
            throw new Problem("expected a list, got " + summary(value));
        }
        return (List<Object>) value;
    }

    static long num(Object value) {
        if (!(value instanceof Long n)) {
            throw new Problem("expected an integer, got " + summary(value));
        }
        return n;
    }

    static String type(Map<String, Object> frame) {
        return String.valueOf(frame.get("type"));
    }

    static boolean isTime(Object value) {
        return value instanceof String s && RFC3339_UTC.matcher(s).matches();
    }

    static Instant instant(Object value) {
        return OffsetDateTime.parse(String.valueOf(value)).toInstant();
    }

    static List<Object> seqs(List<Map<String, Object>> frames) {
        List<Object> result = new ArrayList<>();
        for (Map<String, Object> frame : frames) {
            result.add(frame.get("seq"));
        }
        return result;
    }

    static List<Object> seqsOf(List<Object> items) {
        List<Object> result = new ArrayList<>();
        for (Object item : items) {
            result.add(map(item).get("seq"));
        }
        return result;
    }

    /** What was sent comes back: each field equal (a null may come back absent), more allowed. */
    static boolean covers(Object sent, Object got) {
        if (sent instanceof Map<?, ?> want) {
            if (!(got instanceof Map<?, ?> have)) {
                return false;
            }
            for (Map.Entry<?, ?> field : want.entrySet()) {
                if (field.getValue() == null ? have.get(field.getKey()) != null
                        : !have.containsKey(field.getKey())
                        || !covers(field.getValue(), have.get(field.getKey()))) {
                    return false;
                }
            }
            return true;
        }
        if (sent instanceof List<?> want) {
            if (!(got instanceof List<?> have) || have.size() != want.size()) {
                return false;
            }
            for (int i = 0; i < want.size(); i++) {
                if (!covers(want.get(i), have.get(i))) {
                    return false;
                }
            }
            return true;
        }
        return Objects.equals(sent, got);
    }

    // ---------------------------------------------------------------- HTTP client

    record Answer(int status, String contentType, String body) {
        Object json() {
            return Json.parse(body);
        }

        @Override
        public String toString() {
            return "HTTP " + status + " " + abbreviate(body);
        }
    }

    static Answer get(String path, String token) throws Exception {
        return get(path, token, token == null ? null : "Bearer " + token);
    }

    static Answer get(String path, String token, String authorization) throws Exception {
        HttpRequest.Builder request = HttpRequest.newBuilder(URI.create(httpBase + path))
                .timeout(Duration.ofMillis(WAIT_MS)).GET();
        if (authorization != null) {
            request.header("Authorization", authorization);
        }
        HttpResponse<String> response = http.send(request.build(),
                HttpResponse.BodyHandlers.ofString());
        return new Answer(response.statusCode(),
                response.headers().firstValue("content-type").orElse(""), response.body());
    }

    /** The HTTP status of a refused upgrade, or null when the upgrade succeeded. */
    static Integer refusedStatus(String path, Map<String, String> headers) throws Exception {
        try {
            Peer.openWith(path, headers).close();
            return null;
        } catch (Refused refused) {
            return refused.status;
        }
    }

    // ---------------------------------------------------------------- WebSocket peer

    record Closed(int code, String reason) {
        @Override
        public String toString() {
            return "close " + code + (reason.isEmpty() ? "" : " \"" + reason + "\"");
        }
    }

    record Garbled(String why) {}

    static final class Refused extends Exception {
        private static final long serialVersionUID = 1L;
        final int status;

        Refused(int status) {
            super("upgrade refused with HTTP " + status);
            this.status = status;
        }
    }

    /** A check that cannot go on: the section stops and fails with this message. */
    static final class Problem extends RuntimeException {
        private static final long serialVersionUID = 1L;

        Problem(String message) {
            super(message);
        }
    }

    static final class Peer implements WebSocket.Listener {
        static int opens;
        final String name;
        volatile WebSocket ws;
        boolean msgpack;
        final BlockingQueue<Object> inbox = new LinkedBlockingQueue<>();
        /** Frames read while waiting for another, in arrival order. */
        final List<Map<String, Object>> held = new ArrayList<>();
        final StringBuilder textPart = new StringBuilder();
        final ByteArrayOutputStream binaryPart = new ByteArrayOutputStream();
        final AtomicInteger textMessages = new AtomicInteger();
        final AtomicInteger binaryMessages = new AtomicInteger();
        final List<String> pings = new CopyOnWriteArrayList<>();
        final List<String> pongs = new CopyOnWriteArrayList<>();
        final CompletableFuture<Closed> closed = new CompletableFuture<>();
        boolean closeTaken;
        int requests;
        /** The type of each frame in the order it arrived. */
        final List<String> arrivals = new CopyOnWriteArrayList<>();

        Peer(String name) {
            this.name = name;
        }

        static Peer open(String path, String... subprotocols) throws Exception {
            return openWith(path, Map.of(), subprotocols);
        }

        static Peer openWith(String path, Map<String, String> headers, String... subprotocols)
                throws Exception {
            Peer peer = new Peer("peer" + (++opens));
            WebSocket.Builder builder = http.newWebSocketBuilder()
                    .connectTimeout(Duration.ofMillis(WAIT_MS));
            if (subprotocols.length > 0) {
                builder.subprotocols(subprotocols[0],
                        Arrays.copyOfRange(subprotocols, 1, subprotocols.length));
            }
            headers.forEach(builder::header);
            try {
                peer.ws = builder.buildAsync(URI.create(wsBase + path), peer)
                        .get(WAIT_MS, TimeUnit.MILLISECONDS);
            } catch (ExecutionException failed) {
                if (failed.getCause() instanceof WebSocketHandshakeException refused) {
                    throw new Refused(refused.getResponse().statusCode());
                }
                throw failed;
            }
            peer.msgpack = MSGPACK.equals(peer.ws.getSubprotocol());
            opened.add(peer);
            return peer;
        }

        @Override
        public void onOpen(WebSocket webSocket) {
            ws = webSocket;
            webSocket.request(1);
        }

        @Override
        public CompletionStage<?> onText(WebSocket webSocket, CharSequence data, boolean last) {
            textPart.append(data);
            if (last) {
                String text = textPart.toString();
                textPart.setLength(0);
                textMessages.incrementAndGet();
                inbox.add(decodedFrame(() -> Json.parse(text), text));
            }
            webSocket.request(1);
            return null;
        }

        @Override
        public CompletionStage<?> onBinary(WebSocket webSocket, ByteBuffer data, boolean last) {
            byte[] chunk = new byte[data.remaining()];
            data.get(chunk);
            binaryPart.write(chunk, 0, chunk.length);
            if (last) {
                byte[] bytes = binaryPart.toByteArray();
                binaryPart.reset();
                binaryMessages.incrementAndGet();
                inbox.add(decodedFrame(() -> MsgPack.unpack(bytes), bytes.length + " bytes"));
            }
            webSocket.request(1);
            return null;
        }

        interface Decoder {
            Object decode();
        }

        Object decodedFrame(Decoder decoder, String shown) {
            Object frame = decoded(decoder, shown);
            arrivals.add(frame instanceof Map<?, ?> m ? String.valueOf(m.get("type")) : "?");
            return frame;
        }

        static Object decoded(Decoder decoder, String shown) {
            try {
                Object value = decoder.decode();
                return value instanceof Map ? value : new Garbled("not an object: " + shown);
            } catch (RuntimeException bad) {
                return new Garbled(bad.getMessage() + ": " + abbreviate(shown));
            }
        }

        @Override
        public CompletionStage<?> onPing(WebSocket webSocket, ByteBuffer message) {
            pings.add(StandardCharsets.UTF_8.decode(message).toString());
            webSocket.request(1);
            return null;  // the JDK answers the ping with a pong itself
        }

        @Override
        public CompletionStage<?> onPong(WebSocket webSocket, ByteBuffer message) {
            pongs.add(StandardCharsets.UTF_8.decode(message).toString());
            webSocket.request(1);
            return null;
        }

        @Override
        public CompletionStage<?> onClose(WebSocket webSocket, int statusCode, String reason) {
            Closed close = new Closed(statusCode, reason);
            closed.complete(close);
            inbox.add(close);
            return null;  // the JDK answers the close at once
        }

        @Override
        public void onError(WebSocket webSocket, Throwable error) {
            closed.complete(new Closed(-1, String.valueOf(error)));
            inbox.add(error);
        }

        Map<String, Object> hello(Map<String, Object> fields) throws Exception {
            Map<String, Object> hello = obj("type", "hello");
            hello.putAll(fields);
            send(hello);
            Map<String, Object> answer = take("welcome", f -> Set.of("welcome", "error")
                    .contains(type(f)));
            if (!"welcome".equals(type(answer))) {
                throw new Problem(name + ": hello " + summary(fields) + " refused: "
                        + summary(answer));
            }
            if (!"welcome".equals(arrivals.get(0))) {
                welcomesNotFirst.add(name + " got " + arrivals);
            }
            return answer;
        }

        /** Sends a hello that must be refused; the close that follows. */
        Closed helloRefused(Map<String, Object> fields) throws Exception {
            Map<String, Object> hello = obj("type", "hello");
            hello.putAll(fields);
            send(hello);
            return awaitClose(WAIT_MS);
        }

        Map<String, Object> call(Map<String, Object> request) throws Exception {
            if (!request.containsKey("id")) {
                request.put("id", name + "-" + (++requests));
            }
            Object id = request.get("id");
            send(request);
            return take("the answer to " + request.get("type") + " " + id,
                    f -> Objects.equals(f.get("id"), id) && !"event".equals(type(f)));
        }

        void send(Map<String, Object> frame) throws Exception {
            if (msgpack) {
                sendBinary(MsgPack.pack(frame));
            } else {
                sendText(Json.write(frame));
            }
        }

        void sendText(String text) throws Exception {
            ws.sendText(text, true).get(WAIT_MS, TimeUnit.MILLISECONDS);
        }

        void sendBinary(byte[] bytes) throws Exception {
            ws.sendBinary(ByteBuffer.wrap(bytes), true).get(WAIT_MS, TimeUnit.MILLISECONDS);
        }

        /** One text message in several frames, never splitting a surrogate pair. */
        void sendFragments(String text, int pieces) throws Exception {
            int start = 0;
            for (int i = 1; i <= pieces; i++) {
                int end = i == pieces ? text.length() : text.length() * i / pieces;
                if (end < text.length() && Character.isHighSurrogate(text.charAt(end - 1))) {
                    end++;
                }
                ws.sendText(text.substring(start, end), i == pieces)
                        .get(WAIT_MS, TimeUnit.MILLISECONDS);
                start = end;
            }
        }

        /** The next frame in arrival order, whatever its type. */
        Map<String, Object> next() throws Exception {
            if (!held.isEmpty()) {
                return held.remove(0);
            }
            return take("a frame", f -> true);
        }

        Map<String, Object> takeType(String type) throws Exception {
            return take(type, f -> type.equals(type(f)));
        }

        List<Map<String, Object>> takeEvents(int count) throws Exception {
            List<Map<String, Object>> events = new ArrayList<>();
            for (int i = 0; i < count; i++) {
                events.add(takeType("event"));
            }
            return events;
        }

        /** The first frame, held or arriving within WAIT_MS, that is wanted. */
        Map<String, Object> take(String what, Predicate<Map<String, Object>> wanted)
                throws Exception {
            for (Iterator<Map<String, Object>> it = held.iterator(); it.hasNext(); ) {
                Map<String, Object> frame = it.next();
                if (wanted.test(frame)) {
                    it.remove();
                    return frame;
                }
            }
            long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(WAIT_MS);
            while (true) {
                if (closeTaken) {
                    throw new Problem(name + ": " + closed.getNow(null) + " before " + what
                            + "; held " + summary(held));
                }
                Object item = inbox.poll(Math.max(0, deadline - System.nanoTime()),
                        TimeUnit.NANOSECONDS);
                if (item == null) {
                    throw new Problem(name + ": no " + what + " within " + WAIT_MS + " ms; held "
                            + summary(held));
                }
                if (item instanceof Map) {
                    Map<String, Object> frame = map(item);
                    if (wanted.test(frame)) {
                        return frame;
                    }
                    held.add(frame);
                } else if (item instanceof Closed) {
                    closeTaken = true;
                } else if (item instanceof Garbled garbled) {
                    throw new Problem(name + ": a frame that does not decode: " + garbled.why());
                } else {
                    throw new Problem(name + ": " + describe((Throwable) item));
                }
            }
        }

        /** The close, once it comes; the frames before it are held. */
        Closed awaitClose(long ms) throws Exception {
            Closed close;
            try {
                close = closed.get(ms, TimeUnit.MILLISECONDS);
            } catch (TimeoutException open) {
                throw new Problem(name + ": still open after " + ms + " ms; held "
                        + summary(held) + " " + inbox);
            }
            for (Object item; (item = inbox.poll()) != null; ) {
                if (item instanceof Map) {
                    held.add(map(item));
                }
            }
            closeTaken = true;
            return close;
        }

        /** The next frame or the close, whichever comes first (null: neither in 3 s). */
        Object nextOrClose() throws Exception {
            Object item = inbox.poll(3, TimeUnit.SECONDS);
            if (item instanceof Closed) {
                closeTaken = true;
            }
            return item instanceof Garbled garbled ? "undecodable: " + garbled.why() : item;
        }

        List<Map<String, Object>> heldOfType(String type) {
            List<Map<String, Object>> found = new ArrayList<>();
            for (Iterator<Map<String, Object>> it = held.iterator(); it.hasNext(); ) {
                Map<String, Object> frame = it.next();
                if (type.equals(type(frame))) {
                    found.add(frame);
                    it.remove();
                }
            }
            return found;
        }

        String frameCounts() {
            return textMessages.get() + " text, " + binaryMessages.get() + " binary";
        }

        /** A normal close, not waited for long: what is left open is aborted by closeAll. */
        void close() {
            if (!ws.isOutputClosed()) {
                ws.sendClose(WebSocket.NORMAL_CLOSURE, "");
            }
        }
    }

    /** Closes every connection the section left open, and waits a little for the echoes. */
    static void closeAll() {
        for (Peer peer : opened) {
            try {
                peer.close();
            } catch (RuntimeException ignored) {
                // already closing
            }
        }
        for (Peer peer : opened) {
            if (peer.ws.isInputClosed()) {
                continue;  // closed by the server, or aborted
            }
            try {
                peer.closed.get(2, TimeUnit.SECONDS);
            } catch (Exception slow) {
                peer.ws.abort();
            }
        }
        opened.clear();
    }

    // ---------------------------------------------------------------- JSON

    static final class Json {
        private final String text;
        private int at;

        private Json(String text) {
            this.text = text;
        }

        static Object parse(String text) {
            Json parser = new Json(text);
            Object value = parser.value();
            parser.space();
            if (parser.at != text.length()) {
                throw parser.error("trailing text");
            }
            return value;
        }

        private RuntimeException error(String why) {
            return new IllegalArgumentException("bad JSON at " + at + ": " + why);
        }

        private void space() {
            while (at < text.length() && " \t\r\n".indexOf(text.charAt(at)) >= 0) {
                at++;
            }
        }

        private Object value() {
            space();
            if (at >= text.length()) {
                throw error("end of text");
            }
            char c = text.charAt(at);
            switch (c) {
                case '{':
                    return object();
                case '[':
                    return array();
                case '"':
                    return string();
                default:
                    if (text.startsWith("true", at)) {
                        at += 4;
                        return Boolean.TRUE;
                    }
                    if (text.startsWith("false", at)) {
                        at += 5;
                        return Boolean.FALSE;
                    }
                    if (text.startsWith("null", at)) {
                        at += 4;
                        return null;
                    }
                    return number();
            }
        }

        private Map<String, Object> object() {
            Map<String, Object> result = new LinkedHashMap<>();
            at++;
            space();
            if (at < text.length() && text.charAt(at) == '}') {
                at++;
                return result;
            }
            while (true) {
                space();
                if (at >= text.length() || text.charAt(at) != '"') {
                    throw error("expected a key");
                }
                String key = string();
                space();
                expect(':');
                result.put(key, value());
                space();
                if (at < text.length() && text.charAt(at) == ',') {
                    at++;
                    continue;
                }
                expect('}');
                return result;
            }
        }

        private List<Object> array() {
            List<Object> result = new ArrayList<>();
            at++;
            space();
            if (at < text.length() && text.charAt(at) == ']') {
                at++;
                return result;
            }
            while (true) {
                result.add(value());
                space();
                if (at < text.length() && text.charAt(at) == ',') {
                    at++;
                    continue;
                }
                expect(']');
                return result;
            }
        }

        private void expect(char c) {
            if (at >= text.length() || text.charAt(at) != c) {
                throw error("expected " + c);
            }
            at++;
        }

        private String string() {
            StringBuilder out = new StringBuilder();
            at++;
            while (true) {
                if (at >= text.length()) {
                    throw error("unterminated string");
                }
                char c = text.charAt(at++);
                if (c == '"') {
                    return out.toString();
                }
                if (c != '\\') {
                    out.append(c);
                    continue;
                }
                char escaped = text.charAt(at++);
                switch (escaped) {
                    case 'b' -> out.append('\b');
                    case 'f' -> out.append('\f');
                    case 'n' -> out.append('\n');
                    case 'r' -> out.append('\r');
                    case 't' -> out.append('\t');
                    case 'u' -> {
                        out.append((char) Integer.parseInt(text.substring(at, at + 4), 16));
                        at += 4;
                    }
                    default -> out.append(escaped);
                }
            }
        }

        private Object number() {
            int start = at;
            while (at < text.length() && "+-0123456789.eE".indexOf(text.charAt(at)) >= 0) {
                at++;
            }
            String digits = text.substring(start, at);
            if (digits.isEmpty()) {
                throw error("unexpected character");
            }
            if (digits.matches("-?\\d+")) {
                return Long.parseLong(digits);
            }
            return Double.parseDouble(digits);
        }

        static String write(Object value) {
            StringBuilder out = new StringBuilder();
            write(out, value);
            return out.toString();
        }

        private static void write(StringBuilder out, Object value) {
            if (value == null) {
                out.append("null");
            } else if (value instanceof String s) {
                writeString(out, s);
            } else if (value instanceof Map<?, ?> m) {
                out.append('{');
                String comma = "";
                for (Map.Entry<?, ?> field : m.entrySet()) {
                    out.append(comma);
                    writeString(out, (String) field.getKey());
                    out.append(':');
                    write(out, field.getValue());
                    comma = ",";
                }
                out.append('}');
            } else if (value instanceof List<?> l) {
                out.append('[');
                String comma = "";
                for (Object item : l) {
                    out.append(comma);
                    write(out, item);
                    comma = ",";
                }
                out.append(']');
            } else {
                out.append(value);  // Long, Integer, Double, Boolean
            }
        }

        private static void writeString(StringBuilder out, String s) {
            out.append('"');
            for (int i = 0; i < s.length(); i++) {
                char c = s.charAt(i);
                if (c == '"' || c == '\\') {
                    out.append('\\').append(c);
                } else if (c < 0x20) {
                    out.append(String.format("\\u%04x", (int) c));
                } else {
                    out.append(c);
                }
            }
            out.append('"');
        }
    }

    // ---------------------------------------------------------------- MessagePack

    static final class MsgPack {
        private final ByteBuffer in;

        private MsgPack(byte[] bytes) {
            in = ByteBuffer.wrap(bytes);
        }

        static Object unpack(byte[] bytes) {
            MsgPack reader = new MsgPack(bytes);
            Object value = reader.value();
            if (reader.in.hasRemaining()) {
                throw new IllegalArgumentException("trailing bytes");
            }
            return value;
        }

        private Object value() {
            int b = in.get() & 0xff;
            if (b <= 0x7f) {
                return (long) b;
            }
            if (b >= 0xe0) {
                return (long) (byte) b;
            }
            if ((b & 0xf0) == 0x80) {
                return map(b & 0x0f);
            }
            if ((b & 0xf0) == 0x90) {
                return array(b & 0x0f);
            }
            if ((b & 0xe0) == 0xa0) {
                return string(b & 0x1f);
            }
            return switch (b) {
                case 0xc0 -> null;
                case 0xc2 -> Boolean.FALSE;
                case 0xc3 -> Boolean.TRUE;
                case 0xca -> (double) in.getFloat();
                case 0xcb -> in.getDouble();
                case 0xcc -> (long) (in.get() & 0xff);
                case 0xcd -> (long) (in.getShort() & 0xffff);
                case 0xce -> in.getInt() & 0xffffffffL;
                case 0xcf -> in.getLong();
                case 0xd0 -> (long) in.get();
                case 0xd1 -> (long) in.getShort();
                case 0xd2 -> (long) in.getInt();
                case 0xd3 -> in.getLong();
                case 0xd9 -> string(in.get() & 0xff);
                case 0xda -> string(in.getShort() & 0xffff);
                case 0xdb -> string(in.getInt());
                case 0xdc -> array(in.getShort() & 0xffff);
                case 0xdd -> array(in.getInt());
                case 0xde -> map(in.getShort() & 0xffff);
                case 0xdf -> map(in.getInt());
                default -> throw new IllegalArgumentException(String.format(
                        "MessagePack type 0x%02x is not one the protocol's objects use", b));
            };
        }

        private String string(int length) {
            byte[] bytes = new byte[length];
            in.get(bytes);
            return new String(bytes, StandardCharsets.UTF_8);
        }

        private List<Object> array(int length) {
            List<Object> result = new ArrayList<>();
            for (int i = 0; i < length; i++) {
                result.add(value());
            }
            return result;
        }

        private Map<String, Object> map(int length) {
            Map<String, Object> result = new LinkedHashMap<>();
            for (int i = 0; i < length; i++) {
                Object key = value();
                if (!(key instanceof String)) {
                    throw new IllegalArgumentException("a map key that is not a string: " + key);
                }
                result.put((String) key, value());
            }
            return result;
        }

        static byte[] pack(Object value) {
            ByteArrayOutputStream out = new ByteArrayOutputStream();
            pack(out, value);
            return out.toByteArray();
        }

        private static void pack(ByteArrayOutputStream out, Object value) {
            if (value == null) {
                out.write(0xc0);
            } else if (value instanceof Boolean b) {
                out.write(b ? 0xc3 : 0xc2);
            } else if (value instanceof Integer || value instanceof Long) {
                packInteger(out, ((Number) value).longValue());
            } else if (value instanceof Double d) {
                out.write(0xcb);
                writeBytes(out, ByteBuffer.allocate(8).putDouble(d).array());
            } else if (value instanceof String s) {
                byte[] bytes = s.getBytes(StandardCharsets.UTF_8);
                header(out, bytes.length, 0xa0, 31, 0xd9, 0xda, 0xdb);
                writeBytes(out, bytes);
            } else if (value instanceof List<?> l) {
                header(out, l.size(), 0x90, 15, -1, 0xdc, 0xdd);
                for (Object item : l) {
                    pack(out, item);
                }
            } else if (value instanceof Map<?, ?> m) {
                header(out, m.size(), 0x80, 15, -1, 0xde, 0xdf);
                for (Map.Entry<?, ?> field : m.entrySet()) {
                    pack(out, field.getKey());
                    pack(out, field.getValue());
                }
            } else {
                throw new IllegalArgumentException("cannot pack " + value.getClass());
            }
        }

        private static void packInteger(ByteArrayOutputStream out, long n) {
            if (n >= 0 && n <= 0x7f || n < 0 && n >= -32) {
                out.write((int) n & 0xff);
            } else if (n >= Integer.MIN_VALUE && n <= Integer.MAX_VALUE) {
                out.write(0xd2);
                writeBytes(out, ByteBuffer.allocate(4).putInt((int) n).array());
            } else {
                out.write(0xd3);
                writeBytes(out, ByteBuffer.allocate(8).putLong(n).array());
            }
        }

        /** A length: in the fix type's low bits, else in 8 (if any), 16 or 32 bits. */
        private static void header(ByteArrayOutputStream out, int length, int fix, int fixMax,
                int eight, int sixteen, int thirtyTwo) {
            if (length <= fixMax) {
                out.write(fix | length);
            } else if (eight >= 0 && length <= 0xff) {
                out.write(eight);
                out.write(length);
            } else if (length <= 0xffff) {
                out.write(sixteen);
                writeBytes(out, ByteBuffer.allocate(2).putShort((short) length).array());
            } else {
                out.write(thirtyTwo);
                writeBytes(out, ByteBuffer.allocate(4).putInt(length).array());
            }
        }

        private static void writeBytes(ByteArrayOutputStream out, byte[] bytes) {
            out.write(bytes, 0, bytes.length);
        }
    }
}
