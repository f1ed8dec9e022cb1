"""The cache worker: `fluidfed worker serve`, the runtime agents run in their clusters.

core     the Worker: its blocks in tiers, fetches from the under storage, warm-up,
         hand-off on scale-in, status and instruments; no HTTP server
server   the HTTP handlers over a Worker (`fluidfed.data.protocol`), and `serve`
"""
