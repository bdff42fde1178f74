// The string catalogue: English and German from one table. `t(key, {vars})` fills `{var}`.
// The language is the user's choice (kept in localStorage), else the browser's.
const en = {
  skip: 'Skip to content', units: 'units', actions: 'Actions', export_csv: 'Export my slots', export_csv_hint: 'Energy, trades and money per slot as a CSV file:', inclusion: 'In the batch root?', check: 'Check', check_slot: 'Check that my trades of slot {slot} are in its batch', included: '✓ {n} trade(s) included in root {root}', not_included: '✗ not included in the batch root', no_trades_short: 'no trades',
  nav_home: 'Home', nav_market: 'Market', nav_wallet: 'Wallet', nav_prices: 'Prices', nav_neighbourhood: 'Neighbourhood', nav_operator: 'Operator', nav_account: 'Account', nav_signin: 'Sign in', nav_signup: 'Sign up',
  sign_in: 'Sign in', sign_out: 'Sign out', sign_up: 'Sign up', create_account: 'Create account', no_account: 'No account yet?', have_account: 'Already have an account?',
  demo_hint: 'In the demo, sign in as home-01 … home-12 with the password demo-password.',
  name: 'Name', password: 'Password', name_hint: 'Letters, digits, and - _ . inside; at least 3 characters (kept in lower case).', password_hint: 'At least 12 characters.',
  name_required: 'Enter your name.', password_required: 'Enter your password.', wrong_password: 'Wrong name or password.', welcome: 'Welcome! Link your meter to start.',
  session_ended: 'Your session ended; please sign in again.', retry_after: 'try again in {s} s', required: 'Required.', whole_number: 'Enter a whole number of at least 0.',
  my_meters: 'My meters', meter: 'Meter', status: 'Status', capacity: 'Export / import capacity', public_key: 'Public key', no_meters: 'No meter linked yet.',
  status_pending: 'waiting for approval', status_approved: 'approved', link_meter: 'Link a meter', meter_id: 'Meter id', meter_id_hint: 'The meter_id in your meter agent’s configuration (1–32 of A–Z a–z 0–9 . _ -).',
  public_key_hint: 'Printed by `meter-agent keygen`: 130 hexadecimal digits starting with 04.', public_key_malformed: 'This is not a public key: expected 130 hexadecimal digits (from meter-agent keygen).',
  meter_linked: 'Meter {id} linked. Its readings count once the operator approves it.',
  api_tokens: 'API tokens', tokens_hint: 'A token lets a bot use the API as you (header Authorization: Bearer …).', label: 'Label', label_hint: '1 to 64 characters, e.g. “trading bot”.',
  create_token: 'Create token', token_once: 'Copy the token now; it is shown only once:', no_tokens: 'No tokens.', expires: 'Expires', revoke: 'Revoke', revoke_named: 'Revoke token {label}',
  power_now: 'Power now', grid: 'Grid', home: 'Home', battery: 'Battery', importing: 'importing', exporting: 'exporting', surplus: 'surplus', need: 'need', none: 'none',
  flow_desc: 'Grid: {grid}. Battery: {battery}.', charging: 'charging', discharging: 'discharging', idle: 'idle', balanced: 'balanced',
  flow_hint: 'Your meter measures the grid connection and the battery: the home exports its surplus (solar beyond use and charging) or imports what it needs.',
  live: 'live', offline: 'reconnecting…', last_reading: 'last reading', live_readings: 'readings received live:', no_readings_yet: 'no reading yet',
  money: 'Money', today: 'Today', yesterday: 'Yesterday', this_month: 'This month', last_month: 'Last month', last_2976: 'Last 2976 slots', previous_2976: '2976 slots before', last_96: 'Last 96 slots', previous_96: '96 slots before',
  paid_net: 'With the market', utility_alone: 'Utility alone', saved: 'Better off by', money_hint: 'Settled slots only; + earned, − paid. “Utility alone”: your metered exports at the feed-in tariff less your imports at the retail tariff.',
  bought_locally: 'Bought from neighbours', sold_locally: 'Sold to neighbours',
  energy_by_slot: 'Energy by slot', energy_hint: 'Bars: metered import (up) and export (down) per slot; lines: energy bought and sold in the market.',
  last_96_hint: 'Slots here are shorter than a quarter hour (accelerated demo): the last 96 slots are shown as the day.',
  time: 'Time', import: 'Import', export: 'Export', bought: 'Bought', sold: 'Sold',
  next_slots: 'Next delivery slots', slot: 'Slot', delivery: 'Delivery', phase: 'Phase', gate_closure: 'Gate closure', band: 'Band (feed-in–retail)', grid_fee: 'Grid fee', clearing_price: 'Clearing price', traded: 'Traded',
  phase_not_open: 'not open', phase_window: 'open for orders', phase_gate_closed: 'gate closed', phase_delivering: 'delivering', phase_awaiting_settlement: 'awaiting settlement', phase_settled: 'settled',
  gate_in: 'gate in {s} s', place_order: 'Place a bid or an offer', delivery_slot: 'Delivery slot', side: 'Side', buy: 'Buy', sell: 'Sell', energy_wh: 'Energy (Wh)', price_per_kwh: 'Limit price (units per kWh)',
  band_hint: 'Slot {slot}: between the feed-in tariff {feed_in} and the retail tariff {retail} per kWh; grid fee {fee} per kWh.',
  preview_buy: 'You pay at most {amount}, grid fee included ({fee} of it at most is the fee).', preview_sell: 'You receive at least {amount} after the grid fee; it trades with bids of at least {bid}.',
  no_open_slot: 'No slot is open for orders right now.', energy_invalid: 'Energy: a whole number of Wh, at least 1.', price_invalid: 'Price: a whole number between {feed_in} and {retail}.',
  order_placed: 'Order {id} placed for slot {slot}.', order_book: 'Order book', last_clearing: 'last clearing price', bids: 'Bids', offers: 'Offers', price: 'Price', energy: 'Energy', orders: 'Orders',
  my_open_orders: 'My open orders', no_open_orders: 'No open orders.', order: 'Order', amend: 'Amend', cancel: 'Cancel', cancel_named: 'Cancel order {id}', amend_or_cancel: 'Amend or cancel',
  new_energy: 'New energy (Wh) for order {id}', new_price: 'New price for order {id}', order_cancelled: 'Order {id} cancelled.', order_amended: 'Order {id} amended.',
  my_trades: 'My trades', no_trades: 'No trades in the last slots.', received: 'Received', paid: 'Paid', settlement: 'Settlement', pending: 'pending', settled: 'settled',
  auto_rule: 'Automatic trading rule', rule_hint: 'For meter {meter}: each slot the engine forecasts your surplus or need from your own readings and places the order this rule allows.',
  rule_preview: 'What this rule would have done over the previous day of slots', rule_preview_text: 'Offered surplus in {sellSlots} slots ({sold}); in {sellCleared} of them the clearing price met your limit (about {earned}). Bid for the need in {buySlots} slots ({bought}); in {buyCleared} of them the clearing price met your limit (about {paid}).', rule_preview_hint: 'A rough preview: each slot forecast like the one before it from your own metered energy, compared with the slot’s clearing price (before grid fees; the battery limit is not replayed).',
  sell_at_least: 'Sell surplus at no less than (per kWh)', buy_at_most: 'Buy need at no more than (per kWh)', keep_battery: 'Keep the battery above (%)',
  empty_never_sell: 'Empty: never sell.', empty_never_buy: 'Empty: never buy.', save_rule: 'Save rule', remove_rule: 'Remove rule', rule_saved: 'Rule saved.', rule_removed: 'Rule removed.',
  funds: 'Funds', balance: 'Balance', held_by_bids: 'Held by open bids', held_by_purchases: 'Held by unsettled purchases', available: 'Available',
  funds_hint: 'Balance: deposits less withdrawals plus settled slots. Bids hold their open energy at their limit price until the gate closes; purchases hold until their slot settles.',
  withdraw: 'Withdraw', withdraw_hint: 'At most what is available.', amount: 'Amount (units)', amount_invalid: 'Amount: a whole number of units, at least 1.', withdrawn: '{amount} withdrawn.',
  settlements: 'Settled slots', settlements_hint: 'Each settled slot goes on chain as one batch with a Merkle root of its trades and readings.', no_settlements: 'No settled slot yet.',
  net_amount: 'Net amount', on_chain: 'On chain', batch: 'batch', deposits_withdrawals: 'Deposits and withdrawals', when: 'When', kind: 'Kind', reference: 'Reference', deposit: 'deposit', withdrawal: 'withdrawal',
  prices_title: 'Clearing price against the tariffs', day: 'Day (96 slots)', week: 'Week (672 slots)', period: 'Period', slots_cleared: 'Slots cleared', average_clearing: 'Average clearing price',
  retail: 'Retail tariff', feed_in: 'Feed-in tariff', retail_now: 'Retail now', feed_in_now: 'Feed-in now', prices_hint: 'Prices in units per kWh. A slot without trades has no clearing price.',
  right_now: 'Right now', producing: 'Homes exporting', consuming: 'Homes importing', export_now: 'Exported now', import_now: 'Imported now', homes_anonymised: 'Homes (anonymised), by grid power',
  home_n: 'Home {n}', hood_hint: 'Green: exporting to the grid; amber: importing. Homes are not named.', last_day: 'Over the last day of slots',
  self_sufficiency: 'Community self-sufficiency', covered_locally: 'Imports covered by neighbours’ exports', from_utility: 'Bought from the utility', traded_locally: 'Traded in the market',
  hood_day_hint: 'Over the last {n} slots, from signed meter counters: per slot, the street’s exports cover its imports up to the smaller of the two.',
  market_settings: 'Market settings', mechanism: 'Mechanism', price_rule: 'Price rule (call auction)', k_bp: 'k (basis points)', k_hint: 'For the k-factor rule: 5000 = halfway.',
  mech_call: 'Call auction at gate closure', mech_continuous: 'Continuous double auction', 'mech_pay-as-offer': 'Pay as offer',
  'rule_k-factor': 'k-factor', rule_midpoint: 'Midpoint', 'rule_marginal-bid': 'Marginal bid', 'rule_marginal-ask': 'Marginal ask',
  window_opens: 'Order window opens', seconds_before: 'seconds before delivery', seconds_after: 'seconds after delivery ends', per_kwh_units: 'units per kWh',
  settings_hint: 'A change applies from the first slot whose order window has not opened, so no open order changes terms. Slots are {length} s long.',
  save_settings: 'Save settings', applies_from: 'Applies from slot {slot} (delivery at {at}).', feed_in_above_retail: 'The feed-in tariff must not exceed the retail tariff.',
  versions: 'Versions', from_slot: 'From slot', timeline: 'Window / gate / settlement', members_meters: 'Members and meters', meters_unavailable: 'The engine does not list meters for the operator yet',
  approve: 'Approve', approve_named: 'Approve {meter}', refuse_named: 'Refuse {meter}', meter_approved: 'Meter {meter} approved.', meter_refused: 'Registration of {meter} refused.', approve_export_capacity_w: 'Export capacity of {meter} (W)', approve_import_capacity_w: 'Import capacity of {meter} (W)', approve_manufacturer: 'Manufacturer', approve_model: 'Model', approve_serial: 'Serial number',
  mqtt_once_for: 'Broker login of {meter} for its meter agent ([mqtt] username / password); shown only once:', record_deposit: 'Record a deposit', account: 'Account', reference_hint: 'The bank or chain transaction id; a repeated reference is credited once.',
  deposit_recorded: '{amount} credited to {name}.', settlement_lag: 'Settlement', last_settled: 'Last settled slot', lag_to_chain: 'Settlement to chain', overdue: 'Slots overdue',
  lag_hint: 'Time from a slot’s settlement time to its batch entering the chain outbox; overdue: slots past their settlement time not yet settled.',
  rejected_readings: 'Rejected readings', no_rejections: 'No reading was rejected.', by_reason: 'By reason', reason: 'Reason', count: 'Count', latest_rejections: 'Latest 50', detail: 'Detail',
  nav_join: 'Should I join?', roi_intro: 'What PV, a battery, the meter box and the stake would return you: your year simulated among the 14 homes of a shipped street through the same market the engine runs, and the network token’s price drawn along thousands of paths. The same calculation as `simulate roi`.', roi_inputs: 'Your household', roi_annual_kwh: 'Electricity you use a year (kWh)', roi_pv_kwp: 'PV peak power (kWp)', roi_battery_kwh: 'Battery (kWh)', roi_token_price: 'Token price now (€)', roi_volatility: 'Token volatility a year', roi_more: 'More assumptions: costs, tariffs, network, discount rate', roi_more_hint: 'Rates in % a year. Everything else has a default; simulations/scenarios/household.toml explains each.', roi_pv_cost: 'PV per kWp installed (€)', roi_battery_cost: 'Battery per kWh installed (€)', roi_meter_box: 'Meter box (€)', roi_installation: 'Installation (€)', roi_operation: 'Running costs a year (€)', roi_retail_change: 'Retail tariff change (% a year)', roi_drift: 'Token drift (% a year)', roi_meters: 'Meters in the network now', roi_growth: 'Network growth (% a year)', roi_discount: 'Discount rate (% a year)', roi_lifetime: 'Lifetime (years)', roi_calculate: 'Calculate', roi_calculating: 'Calculating…', roi_done: '{paths} price paths in {ms} ms.', roi_answer: 'The answer', roi_investment: 'Paid now', roi_npv_median: 'Net present value (median)', roi_loss: 'Paths that lose money', roi_year_one: 'Saved in year 1', roi_joining_adds: 'Battery and trading add', roi_break_even: 'Break-even token price', roi_no_price: 'no price makes it pay', roi_any_price: 'pays even at 0', roi_fan: 'Cumulative cash flow', roi_fan_label: 'Fan chart of the cumulative cash flow over the years: median line with bands from the 10th to the 90th percentile of the token price paths', roi_fan_hint: 'Dark band: half of the paths; light band: 80 % of them. Below zero: not paid back yet.', roi_spread: 'Outcomes over the price paths', roi_spread_hint: 'P10: 90 % of the paths do better; P90: only 10 % do.', roi_npv: 'Net present value', roi_irr: 'Internal rate of return', roi_payback: 'Payback', roi_discounted_payback: 'Discounted payback', roi_none: 'none', roi_never: 'never', roi_years: '{n} years', roi_split: 'Where the return comes from', roi_source: 'Source', roi_present_value: 'Present value', roi_share: 'Share', roi_own_use: 'Own use of own energy', roi_local: 'Local sales and purchases', roi_feed_in: 'Feed-in', roi_tokens: 'Token rewards', roi_stake: 'Stake (back at the end less now)', roi_costs: 'Hardware and running costs', roi_token_share: '{n} % of the return depends on the token (at today’s price).', roi_stress: 'Stress scenarios', roi_scenario: 'Scenario', roi_stress_flat: 'Token price stays at today’s', roi_stress_crash_90: 'Token −90 % in year 1', roi_stress_network_stops: 'The network stops paying after year 1', roi_stress_token_worthless: 'The token is worth nothing', roi_year: 'Year', roi_median: 'median', roi_outcome: 'Outcome',
};

const de = {
  skip: 'Zum Inhalt springen', units: 'Einheiten', actions: 'Aktionen', export_csv: 'Meine Slots exportieren', export_csv_hint: 'Energie, Geschäfte und Geld je Slot als CSV-Datei:', inclusion: 'In der Batch-Wurzel?', check: 'Prüfen', check_slot: 'Prüfen, ob meine Geschäfte von Slot {slot} in seinem Batch sind', included: '✓ {n} Geschäft(e) in Wurzel {root} enthalten', not_included: '✗ nicht in der Batch-Wurzel enthalten', no_trades_short: 'keine Geschäfte',
  nav_home: 'Start', nav_market: 'Markt', nav_wallet: 'Geldbörse', nav_prices: 'Preise', nav_neighbourhood: 'Nachbarschaft', nav_operator: 'Betreiber', nav_account: 'Konto', nav_signin: 'Anmelden', nav_signup: 'Registrieren',
  sign_in: 'Anmelden', sign_out: 'Abmelden', sign_up: 'Registrieren', create_account: 'Konto anlegen', no_account: 'Noch kein Konto?', have_account: 'Schon ein Konto?',
  demo_hint: 'In der Demo als home-01 … home-12 mit dem Passwort demo-password anmelden.',
  name: 'Name', password: 'Passwort', name_hint: 'Buchstaben, Ziffern und innen - _ .; mindestens 3 Zeichen (wird kleingeschrieben).', password_hint: 'Mindestens 12 Zeichen.',
  name_required: 'Bitte den Namen eingeben.', password_required: 'Bitte das Passwort eingeben.', wrong_password: 'Name oder Passwort falsch.', welcome: 'Willkommen! Verknüpfen Sie Ihren Zähler.',
  session_ended: 'Ihre Sitzung ist abgelaufen; bitte erneut anmelden.', retry_after: 'in {s} s erneut versuchen', required: 'Pflichtfeld.', whole_number: 'Eine ganze Zahl ab 0 eingeben.',
  my_meters: 'Meine Zähler', meter: 'Zähler', status: 'Status', capacity: 'Einspeise- / Bezugsleistung', public_key: 'Öffentlicher Schlüssel', no_meters: 'Noch kein Zähler verknüpft.',
  status_pending: 'wartet auf Freigabe', status_approved: 'freigegeben', link_meter: 'Zähler verknüpfen', meter_id: 'Zähler-ID', meter_id_hint: 'Die meter_id aus der Konfiguration Ihres Meter-Agents (1–32 Zeichen A–Z a–z 0–9 . _ -).',
  public_key_hint: 'Ausgegeben von `meter-agent keygen`: 130 Hexadezimalziffern, beginnend mit 04.', public_key_malformed: 'Das ist kein öffentlicher Schlüssel: erwartet werden 130 Hexadezimalziffern (von meter-agent keygen).',
  meter_linked: 'Zähler {id} verknüpft. Seine Messwerte zählen, sobald der Betreiber ihn freigibt.',
  api_tokens: 'API-Tokens', tokens_hint: 'Mit einem Token nutzt ein Bot die API in Ihrem Namen (Header Authorization: Bearer …).', label: 'Bezeichnung', label_hint: '1 bis 64 Zeichen, z. B. „Handelsbot“.',
  create_token: 'Token erzeugen', token_once: 'Token jetzt kopieren; es wird nur einmal angezeigt:', no_tokens: 'Keine Tokens.', expires: 'Läuft ab', revoke: 'Widerrufen', revoke_named: 'Token {label} widerrufen',
  power_now: 'Leistung jetzt', grid: 'Netz', home: 'Haus', battery: 'Batterie', importing: 'Bezug', exporting: 'Einspeisung', surplus: 'Überschuss', need: 'Bedarf', none: 'keine',
  flow_desc: 'Netz: {grid}. Batterie: {battery}.', charging: 'lädt', discharging: 'entlädt', idle: 'ruht', balanced: 'ausgeglichen',
  flow_hint: 'Ihr Zähler misst den Netzanschluss und die Batterie: Das Haus speist seinen Überschuss ein (Solar über Verbrauch und Laden hinaus) oder bezieht, was es braucht.',
  live: 'live', offline: 'verbinde neu …', last_reading: 'letzter Messwert', live_readings: 'live empfangene Messwerte:', no_readings_yet: 'noch kein Messwert',
  money: 'Geld', today: 'Heute', yesterday: 'Gestern', this_month: 'Diesen Monat', last_month: 'Letzter Monat', last_2976: 'Letzte 2976 Slots', previous_2976: '2976 Slots davor', last_96: 'Letzte 96 Slots', previous_96: '96 Slots davor',
  paid_net: 'Mit dem Markt', utility_alone: 'Nur Versorger', saved: 'Besser gestellt um', money_hint: 'Nur abgerechnete Slots; + verdient, − bezahlt. „Nur Versorger“: Ihre gemessene Einspeisung zur Einspeisevergütung abzüglich Ihres Bezugs zum Haushaltstarif.',
  bought_locally: 'Von Nachbarn gekauft', sold_locally: 'An Nachbarn verkauft',
  energy_by_slot: 'Energie je Slot', energy_hint: 'Balken: gemessener Bezug (oben) und Einspeisung (unten) je Slot; Linien: im Markt gekaufte und verkaufte Energie.',
  last_96_hint: 'Die Slots sind hier kürzer als eine Viertelstunde (beschleunigte Demo): die letzten 96 Slots gelten als Tag.',
  time: 'Zeit', import: 'Bezug', export: 'Einspeisung', bought: 'Gekauft', sold: 'Verkauft',
  next_slots: 'Nächste Lieferslots', slot: 'Slot', delivery: 'Lieferung', phase: 'Phase', gate_closure: 'Handelsschluss', band: 'Spanne (Einspeisung–Haushalt)', grid_fee: 'Netzentgelt', clearing_price: 'Markträumungspreis', traded: 'Gehandelt',
  phase_not_open: 'noch nicht offen', phase_window: 'offen für Aufträge', phase_gate_closed: 'Handelsschluss', phase_delivering: 'in Lieferung', phase_awaiting_settlement: 'wartet auf Abrechnung', phase_settled: 'abgerechnet',
  gate_in: 'Schluss in {s} s', place_order: 'Kauf- oder Verkaufsauftrag', delivery_slot: 'Lieferslot', side: 'Richtung', buy: 'Kaufen', sell: 'Verkaufen', energy_wh: 'Energie (Wh)', price_per_kwh: 'Limitpreis (Einheiten je kWh)',
  band_hint: 'Slot {slot}: zwischen Einspeisevergütung {feed_in} und Haushaltstarif {retail} je kWh; Netzentgelt {fee} je kWh.',
  preview_buy: 'Sie zahlen höchstens {amount} inklusive Netzentgelt (davon höchstens {fee} Entgelt).', preview_sell: 'Sie erhalten mindestens {amount} nach Netzentgelt; gehandelt wird mit Geboten ab {bid}.',
  no_open_slot: 'Gerade ist kein Slot für Aufträge offen.', energy_invalid: 'Energie: eine ganze Zahl Wh, mindestens 1.', price_invalid: 'Preis: eine ganze Zahl zwischen {feed_in} und {retail}.',
  order_placed: 'Auftrag {id} für Slot {slot} angenommen.', order_book: 'Orderbuch', last_clearing: 'letzter Markträumungspreis', bids: 'Gebote', offers: 'Angebote', price: 'Preis', energy: 'Energie', orders: 'Aufträge',
  my_open_orders: 'Meine offenen Aufträge', no_open_orders: 'Keine offenen Aufträge.', order: 'Auftrag', amend: 'Ändern', cancel: 'Stornieren', cancel_named: 'Auftrag {id} stornieren', amend_or_cancel: 'Ändern oder stornieren',
  new_energy: 'Neue Energie (Wh) für Auftrag {id}', new_price: 'Neuer Preis für Auftrag {id}', order_cancelled: 'Auftrag {id} storniert.', order_amended: 'Auftrag {id} geändert.',
  my_trades: 'Meine Geschäfte', no_trades: 'Keine Geschäfte in den letzten Slots.', received: 'Erhalten', paid: 'Bezahlt', settlement: 'Abrechnung', pending: 'ausstehend', settled: 'abgerechnet',
  auto_rule: 'Automatische Handelsregel', rule_hint: 'Für Zähler {meter}: Jeden Slot schätzt die Engine Ihren Überschuss oder Bedarf aus Ihren eigenen Messwerten und erteilt den Auftrag, den diese Regel erlaubt.',
  rule_preview: 'Was diese Regel am vorigen Tag an Slots getan hätte', rule_preview_text: 'Überschuss in {sellSlots} Slots angeboten ({sold}); in {sellCleared} davon erreichte der Markträumungspreis Ihr Limit (etwa {earned}). Bedarf in {buySlots} Slots geboten ({bought}); in {buyCleared} davon erreichte der Markträumungspreis Ihr Limit (etwa {paid}).', rule_preview_hint: 'Eine grobe Vorschau: jeder Slot wie der vorige aus Ihrer eigenen gemessenen Energie geschätzt und mit dem Markträumungspreis des Slots verglichen (vor Netzentgelten; das Batterielimit wird nicht nachgespielt).',
  sell_at_least: 'Überschuss verkaufen ab (je kWh)', buy_at_most: 'Bedarf kaufen bis (je kWh)', keep_battery: 'Batterie halten über (%)',
  empty_never_sell: 'Leer: nie verkaufen.', empty_never_buy: 'Leer: nie kaufen.', save_rule: 'Regel speichern', remove_rule: 'Regel entfernen', rule_saved: 'Regel gespeichert.', rule_removed: 'Regel entfernt.',
  funds: 'Guthaben', balance: 'Kontostand', held_by_bids: 'Durch offene Gebote gebunden', held_by_purchases: 'Durch nicht abgerechnete Käufe gebunden', available: 'Verfügbar',
  funds_hint: 'Kontostand: Einzahlungen abzüglich Auszahlungen plus abgerechnete Slots. Gebote binden ihre offene Energie zum Limitpreis bis zum Handelsschluss; Käufe bis zur Abrechnung ihres Slots.',
  withdraw: 'Auszahlen', withdraw_hint: 'Höchstens das Verfügbare.', amount: 'Betrag (Einheiten)', amount_invalid: 'Betrag: eine ganze Zahl Einheiten, mindestens 1.', withdrawn: '{amount} ausgezahlt.',
  settlements: 'Abgerechnete Slots', settlements_hint: 'Jeder abgerechnete Slot geht als ein Batch mit einer Merkle-Wurzel seiner Geschäfte und Messwerte auf die Chain.', no_settlements: 'Noch kein Slot abgerechnet.',
  net_amount: 'Nettobetrag', on_chain: 'Auf der Chain', batch: 'Batch', deposits_withdrawals: 'Ein- und Auszahlungen', when: 'Wann', kind: 'Art', reference: 'Referenz', deposit: 'Einzahlung', withdrawal: 'Auszahlung',
  prices_title: 'Markträumungspreis und Tarife', day: 'Tag (96 Slots)', week: 'Woche (672 Slots)', period: 'Zeitraum', slots_cleared: 'Geräumte Slots', average_clearing: 'Mittlerer Markträumungspreis',
  retail: 'Haushaltstarif', feed_in: 'Einspeisevergütung', retail_now: 'Haushaltstarif jetzt', feed_in_now: 'Einspeisevergütung jetzt', prices_hint: 'Preise in Einheiten je kWh. Ein Slot ohne Geschäfte hat keinen Markträumungspreis.',
  right_now: 'Gerade jetzt', producing: 'Häuser mit Einspeisung', consuming: 'Häuser mit Bezug', export_now: 'Einspeisung jetzt', import_now: 'Bezug jetzt', homes_anonymised: 'Häuser (anonym), nach Netzleistung',
  home_n: 'Haus {n}', hood_hint: 'Grün: Einspeisung ins Netz; Bernstein: Bezug. Häuser werden nicht genannt.', last_day: 'Über den letzten Tag an Slots',
  self_sufficiency: 'Autarkie der Gemeinschaft', covered_locally: 'Bezug, gedeckt durch Einspeisung der Nachbarn', from_utility: 'Vom Versorger gekauft', traded_locally: 'Im Markt gehandelt',
  hood_day_hint: 'Über die letzten {n} Slots, aus signierten Zählerständen: je Slot deckt die Einspeisung der Straße ihren Bezug bis zum kleineren der beiden.',
  market_settings: 'Markteinstellungen', mechanism: 'Mechanismus', price_rule: 'Preisregel (Auktion)', k_bp: 'k (Basispunkte)', k_hint: 'Für die k-Faktor-Regel: 5000 = Mitte.',
  mech_call: 'Auktion bei Handelsschluss', mech_continuous: 'Fortlaufende Doppelauktion', 'mech_pay-as-offer': 'Zahlung zum Angebotspreis',
  'rule_k-factor': 'k-Faktor', rule_midpoint: 'Mittelpunkt', 'rule_marginal-bid': 'Grenzgebot', 'rule_marginal-ask': 'Grenzangebot',
  window_opens: 'Auftragsfenster öffnet', seconds_before: 'Sekunden vor Lieferung', seconds_after: 'Sekunden nach Lieferende', per_kwh_units: 'Einheiten je kWh',
  settings_hint: 'Eine Änderung gilt ab dem ersten Slot, dessen Auftragsfenster noch nicht offen ist; kein offener Auftrag ändert seine Bedingungen. Slots dauern {length} s.',
  save_settings: 'Einstellungen speichern', applies_from: 'Gilt ab Slot {slot} (Lieferung um {at}).', feed_in_above_retail: 'Die Einspeisevergütung darf den Haushaltstarif nicht übersteigen.',
  versions: 'Versionen', from_slot: 'Ab Slot', timeline: 'Fenster / Schluss / Abrechnung', members_meters: 'Mitglieder und Zähler', meters_unavailable: 'Die Engine listet Zähler für den Betreiber noch nicht',
  approve: 'Freigeben', approve_named: '{meter} freigeben', refuse_named: '{meter} ablehnen', meter_approved: 'Zähler {meter} freigegeben.', meter_refused: 'Registrierung von {meter} abgelehnt.', approve_export_capacity_w: 'Einspeiseleistung von {meter} (W)', approve_import_capacity_w: 'Bezugsleistung von {meter} (W)', approve_manufacturer: 'Hersteller', approve_model: 'Modell', approve_serial: 'Seriennummer',
  mqtt_once_for: 'Broker-Zugang von {meter} für seinen Meter-Agent ([mqtt] username / password); wird nur einmal angezeigt:', record_deposit: 'Einzahlung erfassen', account: 'Konto', reference_hint: 'Die Bank- oder Chain-Transaktions-ID; eine wiederholte Referenz wird einmal gutgeschrieben.',
  deposit_recorded: '{amount} an {name} gutgeschrieben.', settlement_lag: 'Abrechnung', last_settled: 'Zuletzt abgerechneter Slot', lag_to_chain: 'Abrechnung bis Chain', overdue: 'Überfällige Slots',
  lag_hint: 'Zeit vom Abrechnungszeitpunkt eines Slots bis sein Batch im Chain-Ausgang liegt; überfällig: Slots nach ihrem Abrechnungszeitpunkt, noch nicht abgerechnet.',
  rejected_readings: 'Abgelehnte Messwerte', no_rejections: 'Kein Messwert wurde abgelehnt.', by_reason: 'Nach Grund', reason: 'Grund', count: 'Anzahl', latest_rejections: 'Letzte 50', detail: 'Detail',
  nav_join: 'Lohnt sich das?', roi_intro: 'Was PV, eine Batterie, die Zählerbox und der Stake Ihnen einbringen würden: Ihr Jahr unter den 14 Häusern einer mitgelieferten Straße durch denselben Markt simuliert, den die Engine betreibt, und der Kurs des Netzwerk-Tokens entlang Tausender Pfade gezogen. Dieselbe Rechnung wie `simulate roi`.', roi_inputs: 'Ihr Haushalt', roi_annual_kwh: 'Stromverbrauch im Jahr (kWh)', roi_pv_kwp: 'PV-Spitzenleistung (kWp)', roi_battery_kwh: 'Batterie (kWh)', roi_token_price: 'Tokenkurs heute (€)', roi_volatility: 'Volatilität des Tokens im Jahr', roi_more: 'Weitere Annahmen: Kosten, Tarife, Netzwerk, Zinssatz', roi_more_hint: 'Raten in % im Jahr. Alles andere hat einen Standardwert; simulations/scenarios/household.toml erklärt jeden.', roi_pv_cost: 'PV je kWp installiert (€)', roi_battery_cost: 'Batterie je kWh installiert (€)', roi_meter_box: 'Zählerbox (€)', roi_installation: 'Installation (€)', roi_operation: 'Laufende Kosten im Jahr (€)', roi_retail_change: 'Änderung des Stromtarifs (% im Jahr)', roi_drift: 'Drift des Tokens (% im Jahr)', roi_meters: 'Zähler im Netzwerk heute', roi_growth: 'Wachstum des Netzwerks (% im Jahr)', roi_discount: 'Kalkulationszins (% im Jahr)', roi_lifetime: 'Laufzeit (Jahre)', roi_calculate: 'Berechnen', roi_calculating: 'Wird berechnet…', roi_done: '{paths} Kurspfade in {ms} ms.', roi_answer: 'Die Antwort', roi_investment: 'Heute bezahlt', roi_npv_median: 'Kapitalwert (Median)', roi_loss: 'Pfade mit Verlust', roi_year_one: 'Gespart im 1. Jahr', roi_joining_adds: 'Batterie und Handel bringen', roi_break_even: 'Token-Kurs für die Gewinnschwelle', roi_no_price: 'kein Kurs macht es rentabel', roi_any_price: 'rentabel schon bei 0', roi_fan: 'Kumulierter Zahlungsstrom', roi_fan_label: 'Fächerdiagramm des kumulierten Zahlungsstroms über die Jahre: Median mit Bändern vom 10. bis zum 90. Perzentil der Kurspfade', roi_fan_hint: 'Dunkles Band: die Hälfte der Pfade; helles Band: 80 % davon. Unter null: noch nicht amortisiert.', roi_spread: 'Ergebnisse über die Kurspfade', roi_spread_hint: 'P10: 90 % der Pfade schneiden besser ab; P90: nur 10 %.', roi_npv: 'Kapitalwert', roi_irr: 'Interner Zinsfuß', roi_payback: 'Amortisation', roi_discounted_payback: 'Abgezinste Amortisation', roi_none: 'keiner', roi_never: 'nie', roi_years: '{n} Jahre', roi_split: 'Woher der Ertrag kommt', roi_source: 'Quelle', roi_present_value: 'Barwert', roi_share: 'Anteil', roi_own_use: 'Eigenverbrauch', roi_local: 'Lokaler Verkauf und Einkauf', roi_feed_in: 'Einspeisung', roi_tokens: 'Token-Belohnungen', roi_stake: 'Stake (am Ende zurück, heute bezahlt)', roi_costs: 'Hardware und laufende Kosten', roi_token_share: '{n} % des Ertrags hängen am Token (zum heutigen Kurs).', roi_stress: 'Stressszenarien', roi_scenario: 'Szenario', roi_stress_flat: 'Der Tokenkurs bleibt wie heute', roi_stress_crash_90: 'Token −90 % im 1. Jahr', roi_stress_network_stops: 'Das Netzwerk zahlt nach dem 1. Jahr nicht mehr', roi_stress_token_worthless: 'Der Token ist nichts wert', roi_year: 'Jahr', roi_median: 'Median', roi_outcome: 'Ergebnis',
};

/** Both catalogues, for the test that checks they have the same keys. */
export const catalogues = { en, de };

let current = (() => {
  try {
    const saved = localStorage.getItem('gridshare-lang');
    if (saved && catalogues[saved]) return saved;
  } catch { /* storage may be disabled */ }
  return (navigator.language || 'en').toLowerCase().startsWith('de') ? 'de' : 'en';
})();

export const lang = () => current;

export function setLang(l) {
  if (!catalogues[l]) return;
  current = l;
  try { localStorage.setItem('gridshare-lang', l); } catch { /* not kept: fine */ }
}

export function t(key, vars) {
  const text = catalogues[current][key] ?? en[key] ?? key;
  return vars ? text.replace(/\{(\w+)\}/g, (m, k) => (vars[k] === undefined ? m : String(vars[k]))) : text;
}
