// The market page's charts: price candles with volume, and the depth of the book.
// Drawn with the vendored Lightweight Charts (see vendor/VENDORED.md) from the page's JSON
// endpoint, redrawn every few seconds. Prices arrive as decimal strings; they become numbers
// here only to be drawn.
(function () {
  "use strict";

  const REFRESH_MS = 5000;
  const BID = "#1e7b4b";
  const ASK = "#b3261e";

  function baseOptions() {
    return {
      autoSize: true,
      layout: { background: { color: "transparent" }, textColor: "#4a5568", fontSize: 12 },
      grid: { vertLines: { color: "#eef1f5" }, horzLines: { color: "#eef1f5" } },
      rightPriceScale: { borderVisible: false },
    };
  }

  function start() {
    const priceBox = document.getElementById("price-chart");
    const depthBox = document.getElementById("depth-chart");
    if (!priceBox || !depthBox || !window.LightweightCharts) {
      return;
    }
    const LC = window.LightweightCharts;
    const url = priceBox.dataset.chartUrl;
    let interval = priceBox.dataset.interval;
    let fitPrice = true;
    let fitDepth = true;

    const priceChart = LC.createChart(priceBox, {
      ...baseOptions(),
      timeScale: { timeVisible: true, secondsVisible: false, borderVisible: false },
    });
    const candles = priceChart.addSeries(LC.CandlestickSeries, {
      upColor: BID,
      downColor: ASK,
      borderVisible: false,
      wickUpColor: BID,
      wickDownColor: ASK,
    });
    const volume = priceChart.addSeries(LC.HistogramSeries, {
      priceFormat: { type: "volume" },
      priceScaleId: "volume",
      color: "#c3cad5",
    });
    priceChart.priceScale("volume").applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
    candles.priceScale().applyOptions({ scaleMargins: { top: 0.1, bottom: 0.25 } });

    // Horizontal axis in price, not time: the options chart of Lightweight Charts.
    const depthChart = LC.createOptionsChart(depthBox, {
      ...baseOptions(),
      timeScale: { borderVisible: false },
    });
    const bids = depthChart.addSeries(LC.AreaSeries, {
      lineColor: BID,
      topColor: "rgba(30, 123, 75, 0.35)",
      bottomColor: "rgba(30, 123, 75, 0.05)",
      lineWidth: 2,
      lineType: 1, // steps: depth changes only at a price level
      priceLineVisible: false,
      priceFormat: { type: "volume" },
    });
    const asks = depthChart.addSeries(LC.AreaSeries, {
      lineColor: ASK,
      topColor: "rgba(179, 38, 30, 0.35)",
      bottomColor: "rgba(179, 38, 30, 0.05)",
      lineWidth: 2,
      lineType: 1,
      priceLineVisible: false,
      priceFormat: { type: "volume" },
    });

    function show(selector, isEmpty) {
      const note = priceBox.parentElement.parentElement.querySelector(selector);
      if (note) {
        note.hidden = !isEmpty;
      }
    }

    // Axis labels as precise as the market's tick: "0.010000" -> 2 decimals, "0.001000" -> 3.
    let precision = null;
    function usePrecision(tick) {
      const decimals = Math.max(2, (tick.split(".")[1] || "").replace(/0+$/, "").length);
      if (decimals === precision) {
        return;
      }
      precision = decimals;
      const format = { type: "price", precision: decimals, minMove: Number(tick) };
      candles.applyOptions({ priceFormat: format });
      depthChart.applyOptions({ localization: { precision: decimals } });
    }

    function draw(data) {
      usePrecision(data.tick);
      candles.setData(
        data.candles.map((c) => ({
          time: c.time,
          open: Number(c.open),
          high: Number(c.high),
          low: Number(c.low),
          close: Number(c.close),
        }))
      );
      volume.setData(
        data.candles.map((c) => ({
          time: c.time,
          value: c.volume_lots,
          color: Number(c.close) >= Number(c.open) ? "rgba(30, 123, 75, 0.4)" : "rgba(179, 38, 30, 0.4)",
        }))
      );
      show(".chart-empty", data.candles.length === 0);
      if (fitPrice && data.candles.length) {
        priceChart.timeScale().fitContent();
        fitPrice = false;
      }
      bids.setData(
        data.depth.filter((p) => p.bid_lots !== null).map((p) => ({ time: Number(p.price), value: p.bid_lots }))
      );
      asks.setData(
        data.depth.filter((p) => p.ask_lots !== null).map((p) => ({ time: Number(p.price), value: p.ask_lots }))
      );
      show(".depth-empty", data.depth.length === 0);
      if (fitDepth && data.depth.length) {
        depthChart.timeScale().fitContent();
        fitDepth = false;
      }
      priceBox.dataset.loaded = "true";
      depthBox.dataset.loaded = "true";
    }

    function load() {
      fetch(url + "?interval=" + encodeURIComponent(interval), {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
      })
        .then((response) => (response.ok ? response.json() : Promise.reject(response.status)))
        .then(draw)
        .catch(() => {
          // A missed refresh is drawn by the next one.
        });
    }

    document.querySelectorAll(".intervals [data-interval]").forEach((button) => {
      button.addEventListener("click", () => {
        interval = button.dataset.interval;
        document.querySelectorAll(".intervals [data-interval]").forEach((other) => {
          const isOn = other === button;
          other.setAttribute("aria-pressed", isOn ? "true" : "false");
          other.classList.toggle("secondary", !isOn);
          other.classList.toggle("outline", !isOn);
        });
        fitPrice = true;
        load();
      });
    });

    load();
    window.setInterval(load, REFRESH_MS);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
