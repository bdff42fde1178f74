-- wrk script: place orders (alternating bids and asks of one account, which never cross
-- because self-trades are prevented, so the book grows like a real slot's) over HTTP.
-- TOKEN, METER and SLOT come from the environment; see scripts/bench-orders.sh.
local token = os.getenv("TOKEN")
local meter = os.getenv("METER")
local slot = os.getenv("SLOT")
local n = 0
request = function()
  n = n + 1
  local side, price = "buy", 12000 + (n % 50) * 10
  if n % 2 == 0 then side, price = "sell", 20000 + (n % 50) * 10 end
  local body = string.format(
    '{"meter_id":"%s","slot":%s,"side":"%s","energy_wh":%d,"price_per_kwh":%d}',
    meter, slot, side, 100 + n % 900, price)
  return wrk.format("POST", "/api/v1/orders", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. token,
  }, body)
end
