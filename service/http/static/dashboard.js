// The dashboard (GET /dashboard): a user's devices, their latest values and a chart of
// each sensor's history, kept current by the live stream (GET /api/users/<id>/stream,
// Server-Sent Events) or, where the service has no stream, by polling /latest every 2 s.
//
// Every URL is relative to the page, so the page works over HTTPS and under a path prefix.
// Reading times are TLINK platform time without a zone ("2026-05-01T10:00:00"); the page
// keeps them as seconds on a UTC axis and works out the platform's "now" from the clock the
// service states (TLINK_TIMEZONE), so windows and ages do not depend on the browser's zone.
"use strict";
(() => {
  const root = document.documentElement;
  const ZONE = root.dataset.timezone || "";
  const OFFSET_MINUTES = Number(root.dataset.offsetMinutes) || 0;
  const HISTORY_LIMIT = Math.max(1, Number(root.dataset.historyLimit) || 1000);
  const WINDOWS = { "6h": 6 * 3600, "24h": 24 * 3600, "7d": 7 * 86400, "30d": 30 * 86400 };
  const POLL_MS = 2000; // /latest, when there is no stream
  const DEVICES_EVERY_POLLS = 15; // look for new devices every 30 s while polling
  const CHART_HEIGHT = 160;

  const $ = (id) => document.getElementById(id);
  const el = (tag, className, text) => {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  };

  // ------------------------------------------------------------------ platform time

  let zoneFormat = null;
  if (ZONE && !/^[+-]\d{2}:\d{2}$/.test(ZONE)) {
    try {
      zoneFormat = new Intl.DateTimeFormat("en-US", {
        timeZone: ZONE, hourCycle: "h23", year: "numeric", month: "2-digit", day: "2-digit",
        hour: "2-digit", minute: "2-digit", second: "2-digit",
      });
    } catch {
      zoneFormat = null; // a zone the browser does not know: the offset the service gave
    }
  }

  /** The platform's wall clock now, as seconds on the UTC axis readings are drawn on. */
  function platformNow() {
    const now = Date.now();
    if (zoneFormat) {
      const p = Object.fromEntries(zoneFormat.formatToParts(new Date(now)).map((x) => [x.type, x.value]));
      return Date.UTC(+p.year, +p.month - 1, +p.day, +p.hour % 24, +p.minute, +p.second) / 1000;
    }
    return Math.floor(now / 1000) + OFFSET_MINUTES * 60;
  }

  // With TLINK_TIMEZONE set the service writes reading times with their offset (+08:00); the page
  // keeps platform time as written, without it: the first 19 characters.
  const plain = (time) => (time ? time.slice(0, 19) : time);
  const toSeconds = (platformTime) => Date.parse(`${plain(platformTime)}Z`) / 1000;
  const toPlatformTime = (seconds) => new Date(seconds * 1000).toISOString().slice(0, 19);

  function ageText(platformTime) {
    if (!platformTime) return "never";
    const age = Math.max(0, platformNow() - toSeconds(platformTime));
    if (age < 60) return `${Math.floor(age)} s ago`;
    if (age < 3600) return `${Math.floor(age / 60)} min ago`;
    if (age < 86400) return `${Math.floor(age / 3600)} h ago`;
    return `${Math.floor(age / 86400)} d ago`;
  }

  // ------------------------------------------------------------------ the API

  class NeedKey extends Error {}
  class ApiFailure extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function apiGet(path) {
    const resp = await fetch(path, { headers: { Accept: "application/json", ...tlinkKey.headers() }, cache: "no-store" });
    if (resp.status === 401) throw new NeedKey("API key needed");
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new ApiFailure(resp.status, body.error || resp.statusText);
    return body;
  }

  const userPath = () => `api/users/${encodeURIComponent(state.user)}`;
  const devicePath = (deviceId) => `${userPath()}/devices/${encodeURIComponent(deviceId)}`;

  async function allDevices() {
    const devices = [];
    for (let page = 1; ; page += 1) {
      const body = await apiGet(`${userPath()}/devices?pageSize=100&historyLimit=0&page=${page}`);
      devices.push(...body.devices);
      if (page >= body.pagination.pages) return devices;
    }
  }

  // ------------------------------------------------------------------ state

  const state = {
    user: null,
    window: "6h",
    devices: new Map(), // deviceId -> device (see addDevice)
    generation: 0, // bumped by every new user, window or key: older answers are dropped
    source: null, // the EventSource
    timer: null, // the polling timer
    polls: 0,
  };

  function setStatus(text, kind) {
    const status = $("status");
    status.textContent = text;
    status.dataset.kind = kind || "info";
  }

  function setLive(mode) {
    const live = $("live");
    live.dataset.mode = mode;
    live.textContent = { stream: "live: stream", polling: `live: polling every ${POLL_MS / 1000} s`,
                         reconnecting: "live: reconnecting", off: "live: off" }[mode];
  }

  function tick() {
    const live = $("live");
    live.dataset.ticks = String(Number(live.dataset.ticks || 0) + 1);
  }

  // ------------------------------------------------------------------ rendering

  function badge(kind, text) {
    return el("span", `badge ${kind}`, text);
  }

  function lineBadge(isLine) {
    if (isLine === true) return badge("online", "online");
    if (isLine === false) return badge("offline", "offline");
    return badge("unknown", "state unknown");
  }

  function addDevice(summary) {
    const section = el("section", "device");
    section.dataset.deviceId = summary.deviceId;
    const head = el("header", "device-head");
    const title = el("h2", "device-name", summary.deviceName || `Device ${summary.deviceId}`);
    const badges = el("span", "badges");
    head.append(title, badges);
    const meta = el("p", "device-meta");
    const sensors = el("div", "sensors");
    section.append(head, meta, sensors);
    $("devices").append(section);
    const device = { id: summary.deviceId, summary, section, badges, meta, sensorsEl: sensors, sensors: new Map() };
    state.devices.set(summary.deviceId, device);
    renderDeviceHead(device);
    return device;
  }

  function renderDeviceHead(device) {
    const s = device.summary;
    const parts = [`device ${s.deviceId}`];
    if (s.deviceNo) parts.push(`no. ${s.deviceNo}`);
    if (s.lastPushTime) parts.push(`last push ${s.lastPushTime.replace("T", " ")}`);
    device.meta.textContent = parts.join(" · ");
    const sensors = [...device.sensors.values()];
    const lines = sensors.map((x) => x.isLine).filter((x) => x !== null && x !== undefined);
    const isLine = lines.length ? lines.some(Boolean) : null;
    const alarms = sensors.filter((x) => x.isAlarm === true).length;
    device.badges.replaceChildren(lineBadge(isLine), ...(alarms ? [badge("alarm", `alarm (${alarms})`)] : []));
    device.section.classList.toggle("in-alarm", alarms > 0);
  }

  function addSensor(device, summary) {
    const article = el("article", "sensor");
    article.dataset.sensorId = summary.sensorId;
    const head = el("div", "sensor-head");
    const name = el("h3", "sensor-name", summary.sensorName || `Sensor ${summary.sensorId}`);
    const value = el("span", "value");
    const age = el("span", "age");
    const badges = el("span", "badges");
    head.append(name, value, age, badges);
    const chart = el("div", "chart");
    chart.dataset.points = "0";
    const note = el("p", "chart-note");
    article.append(head, chart, note);
    device.sensorsEl.append(article);
    const sensor = {
      id: summary.sensorId, device, unit: summary.unit || "", name: name.textContent,
      value: summary.latestValue, recordedAt: plain(summary.latestRecordedAt), isAlarm: summary.isAlarm, isLine: summary.isLine,
      article, valueEl: value, ageEl: age, badgesEl: badges, chartEl: chart, noteEl: note,
      xs: [], ys: [], plot: null,
    };
    device.sensors.set(summary.sensorId, sensor);
    renderLatest(sensor);
    return sensor;
  }

  function renderLatest(sensor) {
    sensor.valueEl.replaceChildren(el("b", "reading", sensor.value ?? "–"), " ", el("span", "unit", sensor.unit));
    sensor.ageEl.dataset.recordedAt = sensor.recordedAt || "";
    sensor.ageEl.textContent = ageText(sensor.recordedAt);
    sensor.ageEl.title = sensor.recordedAt ? `reading time ${sensor.recordedAt.replace("T", " ")} (platform time)` : "";
    const badges = [lineBadge(sensor.isLine)];
    if (sensor.isAlarm === true) badges.push(badge("alarm", "alarm"));
    sensor.badgesEl.replaceChildren(...badges);
    sensor.article.classList.toggle("in-alarm", sensor.isAlarm === true);
  }

  function updateAges() {
    for (const age of document.querySelectorAll(".age")) age.textContent = ageText(age.dataset.recordedAt);
  }

  // ------------------------------------------------------------------ charts

  const numeric = (value) => {
    const n = value === null || value === undefined ? NaN : Number(value);
    return Number.isFinite(n) ? n : null;
  };

  function windowStart() {
    return platformNow() - WINDOWS[state.window];
  }

  function chartOptions(sensor, width) {
    return {
      width,
      height: CHART_HEIGHT,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"), // platform time as written
      scales: {
        x: {
          time: true,
          // The whole window up to now, whatever the readings cover (the sensor's own points,
          // not uPlot's min and max: for a single point uPlot makes the span a day's worth of units).
          range: () => {
            const xs = sensor.xs;
            const end = Math.max(platformNow(), xs.length ? xs[xs.length - 1] : 0);
            return [Math.min(end - WINDOWS[state.window], xs.length ? xs[0] : end), end];
          },
        },
      },
      series: [
        {},
        {
          label: sensor.unit ? `${sensor.name} (${sensor.unit})` : sensor.name,
          stroke: "#2563eb",
          fill: "rgba(37, 99, 235, 0.08)",
          width: 2,
          value: (u, v) => (v === null || v === undefined ? "–" : `${v} ${sensor.unit}`.trim()),
        },
      ],
      axes: [{}, { size: 56 }],
      legend: { live: true },
    };
  }

  function drawChart(sensor) {
    const chart = sensor.chartEl;
    chart.dataset.points = String(sensor.xs.length);
    const full = sensor.xs.length >= HISTORY_LIMIT;
    sensor.noteEl.textContent = sensor.xs.length === 0 ? "No readings in this window."
      : full ? `The newest ${HISTORY_LIMIT} readings (MAX_HISTORY_LIMIT) of this window.` : "";
    const data = [sensor.xs, sensor.ys];
    if (sensor.plot) {
      sensor.plot.setData(data);
      return;
    }
    sensor.plot = new uPlot(chartOptions(sensor, Math.max(200, chart.clientWidth)), data, chart);
    new ResizeObserver(() => {
      if (sensor.plot && chart.clientWidth) sensor.plot.setSize({ width: chart.clientWidth, height: CHART_HEIGHT });
    }).observe(chart);
  }

  /** Set a sensor's points from a history answer (newest first). */
  function setHistory(sensor, history) {
    const ascending = [...history].reverse();
    sensor.xs = ascending.map((r) => toSeconds(r.recordedAt));
    sensor.ys = ascending.map((r) => numeric(r.value));
    drawChart(sensor);
  }

  /** Add readings to a sensor's points; a reading time already shown is kept as it is (first logged wins). */
  function addPoints(sensor, readings) {
    const start = windowStart();
    let changed = false;
    for (const r of readings) {
      const x = toSeconds(r.recordedAt);
      if (!(x >= start)) continue;
      let i = sensor.xs.length;
      while (i > 0 && sensor.xs[i - 1] > x) i -= 1;
      if (i > 0 && sensor.xs[i - 1] === x) continue;
      sensor.xs.splice(i, 0, x);
      sensor.ys.splice(i, 0, numeric(r.value));
      changed = true;
    }
    if (!changed) return;
    let old = 0;
    while (old < sensor.xs.length && sensor.xs[old] < start) old += 1;
    sensor.xs.splice(0, old);
    sensor.ys.splice(0, old);
    drawChart(sensor);
  }

  /** A newer reading becomes the sensor's latest value (latest means the newest reading time). */
  function takeLatest(sensor, reading) {
    if (sensor.recordedAt && plain(reading.recordedAt) < sensor.recordedAt) return;
    sensor.value = reading.value;
    sensor.recordedAt = plain(reading.recordedAt);
    if (reading.isAlarm !== undefined) sensor.isAlarm = reading.isAlarm;
    if (reading.isLine !== undefined) sensor.isLine = reading.isLine;
    renderLatest(sensor);
  }

  async function loadHistory(device, generation, since) {
    const start = since || toPlatformTime(windowStart());
    const body = await apiGet(
      `${devicePath(device.id)}/history?startTime=${encodeURIComponent(start)}&historyLimit=${HISTORY_LIMIT}`,
    );
    if (generation !== state.generation) return;
    device.summary = body.device;
    if (!since) device.section.dataset.startTime = start;
    for (const s of body.sensors) {
      const sensor = device.sensors.get(s.sensorId) || addSensor(device, s);
      if (since) addPoints(sensor, s.history);
      else setHistory(sensor, s.history);
    }
    renderDeviceHead(device);
  }

  // ------------------------------------------------------------------ loading a user

  function stopLive() {
    if (state.source) state.source.close();
    state.source = null;
    clearTimeout(state.timer);
    state.timer = null;
    setLive("off");
  }

  function reset() {
    stopLive();
    state.generation += 1;
    state.devices.clear();
    $("devices").replaceChildren();
  }

  async function show(user) {
    reset();
    state.user = user;
    const generation = state.generation;
    const params = new URLSearchParams(location.search);
    params.set("user", user);
    params.set("window", state.window);
    history.replaceState(null, "", `?${params}`);
    setStatus(`Loading user ${user}…`);
    try {
      const devices = await allDevices();
      if (generation !== state.generation) return;
      await addDevices(devices, generation);
      if (generation !== state.generation) return;
      setStatus(devices.length ? `User ${user}: ${devices.length} device${devices.length === 1 ? "" : "s"}.`
        : `User ${user} has no devices yet.`);
      startLive(generation);
    } catch (error) {
      failed(error, generation);
    }
  }

  async function addDevices(summaries, generation) {
    const added = [];
    for (const summary of summaries) {
      if (state.devices.has(summary.deviceId)) continue;
      const device = addDevice(summary);
      for (const s of summary.sensors) addSensor(device, s);
      renderDeviceHead(device);
      added.push(device);
    }
    await Promise.all(added.map((device) => loadHistory(device, generation)));
    return added.length;
  }

  async function reloadWindow() {
    if (!state.user) return;
    const generation = state.generation; // the live updates go on
    try {
      await Promise.all([...state.devices.values()].map((device) => loadHistory(device, generation)));
    } catch (error) {
      failed(error, generation);
    }
  }

  function failed(error, generation) {
    if (generation !== state.generation) return;
    if (error instanceof NeedKey) {
      stopLive();
      const had = Boolean(tlinkKey.get());
      $("key-form").hidden = false;
      $("api-key").focus();
      setStatus(had ? "That API key was refused: type another one." : "This service needs an API key.", "error");
      return;
    }
    if (error instanceof ApiFailure && error.status === 404) {
      setStatus(`User ${state.user} is unknown: no push or sync has named it yet.`, "error");
      return;
    }
    setStatus(error instanceof ApiFailure ? `${error.status}: ${error.message}` : `The service does not answer (${error.message}).`,
              "error");
  }

  // ------------------------------------------------------------------ live updates

  function startLive(generation) {
    if (!window.EventSource) {
      startPolling(generation);
      return;
    }
    const key = tlinkKey.get();
    const source = new EventSource(`${userPath()}/stream${key ? `?access_token=${encodeURIComponent(key)}` : ""}`);
    state.source = source;
    let opened = false;
    source.addEventListener("open", () => {
      if (opened) refreshLatest(generation).catch((error) => failed(error, generation)); // what a reconnect missed
      opened = true;
      setLive("stream");
    });
    source.addEventListener("reading", (event) => {
      if (generation !== state.generation) return;
      onReading(JSON.parse(event.data), generation);
      tick();
    });
    source.addEventListener("error", () => {
      if (generation !== state.generation) return;
      if (source.readyState === EventSource.CLOSED) {
        // No stream here (404, an older service) or it refused us: poll /latest instead.
        source.close();
        state.source = null;
        startPolling(generation);
      } else {
        setLive("reconnecting");
      }
    });
  }

  function onReading(event, generation) {
    const device = state.devices.get(event.deviceId);
    if (!device) {
      findNewDevices(generation);
      return;
    }
    for (const reading of event.readings || []) {
      const sensor = device.sensors.get(reading.sensorId);
      if (!sensor) {
        loadHistory(device, generation).catch((error) => failed(error, generation));
        continue;
      }
      takeLatest(sensor, reading);
      addPoints(sensor, [reading]);
    }
    renderDeviceHead(device);
  }

  function startPolling(generation) {
    setLive("polling");
    $("live").dataset.pollMs = String(POLL_MS);
    let next = performance.now() + POLL_MS;
    const poll = async () => {
      if (generation !== state.generation) return;
      try {
        state.polls += 1;
        if (state.polls % DEVICES_EVERY_POLLS === 0) await findNewDevices(generation);
        await refreshLatest(generation);
        tick();
      } catch (error) {
        failed(error, generation); // shown; the next poll tries again, unless a key is needed
        if (error instanceof NeedKey) return;
      }
      if (generation !== state.generation) return;
      next += POLL_MS; // every 2 s from the start of one poll to the next, however long a poll takes
      const now = performance.now();
      if (next < now) next = now;
      schedule(next - now);
    };
    const schedule = (delay) => {
      $("live").dataset.nextPoll = String(performance.now() + delay); // when the next poll starts
      state.timer = setTimeout(poll, delay);
    };
    schedule(POLL_MS);
  }

  async function findNewDevices(generation) {
    const added = await addDevices(await allDevices(), generation);
    if (added && generation === state.generation) setStatus(`User ${state.user}: ${state.devices.size} devices.`);
  }

  /** Ask /latest for every device; a sensor whose latest moved gets the readings since from /history. */
  async function refreshLatest(generation) {
    await Promise.all([...state.devices.values()].map(async (device) => {
      const body = await apiGet(`${devicePath(device.id)}/latest`);
      if (generation !== state.generation) return;
      device.summary = body.device;
      let since = null;
      let unknown = false;
      for (const s of body.sensors) {
        const sensor = device.sensors.get(s.sensorId);
        if (!sensor) {
          unknown = true;
          continue;
        }
        if (s.latest && plain(s.latest.recordedAt) !== sensor.recordedAt) {
          if (sensor.recordedAt && (!since || sensor.recordedAt < since)) since = sensor.recordedAt;
          if (!sensor.recordedAt) unknown = true;
          takeLatest(sensor, s.latest);
        }
      }
      renderDeviceHead(device);
      if (unknown) await loadHistory(device, generation); // a new sensor, or a first reading: the whole window
      else if (since) await loadHistory(device, generation, since); // only what came since
    }));
    if (generation === state.generation && $("status").dataset.kind === "error") {
      setStatus(`User ${state.user}: ${state.devices.size} device${state.devices.size === 1 ? "" : "s"}.`);
    }
  }

  // ------------------------------------------------------------------ controls

  function selectWindow(name) {
    state.window = name;
    for (const button of document.querySelectorAll("#windows button")) {
      button.setAttribute("aria-pressed", String(button.dataset.window === name));
    }
  }

  $("user-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const user = $("user-id").value.trim();
    if (/^[0-9]+$/.test(user)) show(user);
  });

  $("windows").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-window]");
    if (!button || button.dataset.window === state.window) return;
    selectWindow(button.dataset.window);
    if (state.user) {
      const params = new URLSearchParams(location.search);
      params.set("window", state.window);
      history.replaceState(null, "", `?${params}`);
    }
    reloadWindow();
  });

  tlinkKey.onSubmit(() => {
    $("key-form").hidden = true;
    $("forget-key").hidden = false;
    if (state.user) show(state.user);
    else setStatus("API key kept for this tab. Type a user id.");
  });

  $("forget-key").addEventListener("click", () => {
    tlinkKey.clear();
    $("forget-key").hidden = true;
    reset();
    setStatus("API key forgotten.");
  });

  $("forget-key").hidden = !tlinkKey.get();
  setInterval(updateAges, 1000);

  const params = new URLSearchParams(location.search);
  if (WINDOWS[params.get("window")]) selectWindow(params.get("window"));
  const initial = params.get("user");
  if (initial && /^[0-9]+$/.test(initial)) {
    $("user-id").value = initial;
    show(initial);
  }
})();
