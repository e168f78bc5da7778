"""Reference data of the synthetic stream: time units, countries, names, companies, titles,
sources and pages (see :mod:`leadflow.generator`)."""

from __future__ import annotations

from datetime import timedelta, timezone

_H = 3600.0
_D = 86400.0
_HALF_LIFE = 30 * _D
_MQL = 50.0


_COUNTRIES: tuple[tuple[str, int], ...] = (
    ("US", 30), ("GB", 9), ("DE", 9), ("FR", 6), ("CA", 6), ("NL", 4), ("ES", 4),
    ("KR", 5), ("RU", 5), ("BR", 6), ("IN", 8),
)
_COUNTRY_CODES = tuple(c for c, _ in _COUNTRIES)
_COUNTRY_WEIGHTS = tuple(w for _, w in _COUNTRIES)

# Local UTC offsets (standard time), used for behaviour (people act in their daytime) and by
# the upstream systems that send local time instead of UTC.
_OFFSETS: dict[str, timedelta] = {
    "US": timedelta(hours=-5), "CA": timedelta(hours=-5), "GB": timedelta(0),
    "DE": timedelta(hours=1), "FR": timedelta(hours=1), "NL": timedelta(hours=1),
    "ES": timedelta(hours=1), "KR": timedelta(hours=9), "RU": timedelta(hours=3),
    "BR": timedelta(hours=-3), "IN": timedelta(hours=5, minutes=30),
}
_TZ: dict[str, timezone] = {c: timezone(off) for c, off in _OFFSETS.items()}

# (prefix, number of random digits): every completion is a valid personal number for the
# country according to ``phonenumbers`` (mobiles, or geographic lines in NANP); no reserved
# fiction ranges (US 555, GB 07700 900xxx), no toll-free. tests/unit/test_generator.py checks.
PHONE_TEMPLATES: dict[str, tuple[tuple[str, int], ...]] = {
    "US": (("+16502", 6), ("+14152", 6)),
    "CA": (("+14163", 6), ("+16043", 6)),
    "GB": (("+44780", 7), ("+44795", 7)),
    "DE": (("+49151", 8), ("+49170", 7)),
    "FR": (("+3361", 7), ("+3367", 7)),
    "NL": (("+3161", 7),),
    "ES": (("+346", 8),),
    "KR": (("+82102", 7), ("+82103", 7)),
    "RU": (("+7912", 7), ("+7916", 7)),
    "BR": (("+551198", 7),),
    "IN": (("+9198", 8),),
}

_FIRST: dict[str, tuple[str, ...]] = {
    "en": ("James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda",
           "David", "Sarah", "Daniel", "Emily", "Chris", "Jessica", "Matthew", "Ashley",
           "Andrew", "Laura", "Kevin", "Rachel", "Brian", "Megan", "Ryan", "Olivia", "Ethan",
           "Sophia", "Noah", "Emma", "Liam", "Ava", "Oliver", "Amelia", "Harry", "Grace"),
    "DE": ("Lukas", "Anna", "Felix", "Lena", "Jonas", "Laura", "Maximilian", "Sophie", "Paul",
           "Marie", "Tobias", "Katharina", "Florian", "Julia"),
    "FR": ("Camille", "Louis", "Chloe", "Hugo", "Manon", "Lucas", "Lea", "Antoine", "Julie",
           "Thomas", "Nicolas", "Claire"),
    "NL": ("Daan", "Sanne", "Bram", "Lotte", "Sem", "Fleur", "Jeroen", "Anouk", "Ruben",
           "Eva"),
    "ES": ("Javier", "Lucia", "Carlos", "Maria", "Pablo", "Carmen", "Alejandro", "Elena",
           "Diego", "Sofia"),
    "KR": ("Minjun", "Seoyeon", "Jiho", "Jiwoo", "Hyunwoo", "Soyeon", "Donghyun", "Yuna",
           "Jaewon", "Hana"),
    "RU": ("Dmitry", "Olga", "Alexei", "Anastasia", "Sergei", "Ekaterina", "Ivan", "Natalia",
           "Mikhail", "Irina", "Pavel", "Svetlana"),
    "BR": ("Joao", "Ana", "Pedro", "Juliana", "Lucas", "Mariana", "Gabriel", "Fernanda",
           "Rafael", "Camila"),
    "IN": ("Aarav", "Priya", "Rohan", "Ananya", "Vikram", "Neha", "Arjun", "Pooja", "Rahul",
           "Kavya", "Siddharth", "Divya"),
}
_LAST: dict[str, tuple[str, ...]] = {
    "en": ("Smith", "Johnson", "Williams", "Brown", "Jones", "Miller", "Davis", "Wilson",
           "Anderson", "Taylor", "Thomas", "Moore", "Martin", "Jackson", "Thompson", "White",
           "Harris", "Clark", "Lewis", "Walker", "Hall", "Young", "King", "Wright", "Scott",
           "Green", "Baker", "Adams", "Nelson", "Hill", "Evans", "Turner"),
    "DE": ("Mueller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker",
           "Hoffmann", "Koch", "Richter", "Wolf"),
    "FR": ("Martin", "Bernard", "Dubois", "Durand", "Lefebvre", "Moreau", "Laurent", "Simon",
           "Michel", "Garnier", "Roux", "Fontaine"),
    "NL": ("de Jong", "Jansen", "de Vries", "van den Berg", "Bakker", "Visser", "Smit",
           "Meijer", "de Boer", "Mulder"),
    "ES": ("Garcia", "Fernandez", "Lopez", "Martinez", "Sanchez", "Perez", "Gomez", "Ruiz",
           "Diaz", "Moreno"),
    "KR": ("Kim", "Lee", "Park", "Choi", "Jung", "Kang", "Cho", "Yoon", "Jang", "Lim"),
    "RU": ("Smirnov", "Ivanov", "Kuznetsov", "Popov", "Sokolov", "Lebedev", "Kozlov",
           "Novikov", "Morozov", "Volkov"),
    "BR": ("Silva", "Santos", "Oliveira", "Souza", "Lima", "Pereira", "Costa", "Rodrigues",
           "Almeida", "Carvalho"),
    "IN": ("Sharma", "Patel", "Gupta", "Singh", "Kumar", "Reddy", "Iyer", "Nair", "Mehta",
           "Joshi"),
}

_FREE_MAIL: dict[str, tuple[str, ...]] = {
    "RU": ("mail.ru", "yandex.ru", "gmail.com"),
    "KR": ("naver.com", "gmail.com"),
    "DE": ("gmx.de", "gmail.com", "outlook.com"),
    "US": ("gmail.com", "gmail.com", "yahoo.com", "outlook.com", "icloud.com", "aol.com",
           "hotmail.com"),
    "": ("gmail.com", "gmail.com", "outlook.com", "hotmail.com", "yahoo.com", "proton.me",
         "icloud.com"),
}

_TLD: dict[str, tuple[str, ...]] = {
    "US": ("com", "com", "io"), "CA": ("ca", "com"), "GB": ("co.uk", "com"), "DE": ("de",),
    "FR": ("fr", "com"), "NL": ("nl",), "ES": ("es", "com"), "KR": ("co.kr", "com"),
    "RU": ("ru",), "BR": ("com.br",), "IN": ("in", "com"),
}
_LEGAL: dict[str, tuple[str, ...]] = {
    "US": ("Inc", "LLC", "Corp"), "CA": ("Inc", "Ltd"), "GB": ("Ltd", "plc"),
    "DE": ("GmbH", "AG"), "FR": ("SAS", "SA"), "NL": ("B.V.",), "ES": ("S.L.", "S.A."),
    "KR": ("Co., Ltd.",), "RU": ("OOO",), "BR": ("Ltda",), "IN": ("Pvt Ltd",),
}
_CO_A = ("North", "Blue", "Bright", "Silver", "Iron", "Green", "Red", "Swift", "Clear", "True",
         "Peak", "Summit", "Rapid", "Cedar", "Maple", "Oak", "Pine", "River", "Stone", "Star",
         "Sun", "Nova", "Alpha", "Delta", "Apex", "Vertex", "Quantum", "Fusion", "Pixel",
         "Bold", "Harbor", "Atlas", "Orbit", "Beacon", "Crest", "Ember", "Falcon", "Granite",
         "Horizon", "Lumen", "Meridian", "Nimbus", "Onyx", "Prism", "Quartz", "Sierra",
         "Tidal", "Zenith")
_CO_B = ("wind", "wave", "point", "works", "logic", "soft", "ware", "forge", "labs", "line",
         "path", "field", "bridge", "gate", "stack", "base", "cloud", "data", "scale", "loop",
         "craft", "mark", "core", "hub", "sync", "flow", "metrics", "signal", "vision", "leaf",
         "rock", "port", "dale", "worth", "stream", "spark", "shift", "grid", "nest", "tech")
_CO_C = ("Systems", "Labs", "Group", "Digital", "Solutions", "Partners", "Analytics",
         "Health", "Retail", "Industries", "Capital", "Academy")

_INDUSTRIES = ("software", "retail", "healthcare", "manufacturing", "finance", "education")
_INDUSTRY_WEIGHTS = (30, 15, 14, 16, 13, 12)

_TITLES_EXEC = ("CEO", "Founder", "CTO", "CFO", "COO", "VP Sales", "VP Marketing",
                "VP Engineering", "Owner", "Chief Revenue Officer")
_TITLES_MGR = ("Director of Marketing", "Director of IT", "Head of Sales", "Head of Operations",
               "Marketing Manager", "Sales Manager", "Product Manager", "IT Manager",
               "Team Lead", "Procurement Manager")
_TITLES_IC = ("Software Engineer", "Data Analyst", "Marketing Specialist",
              "Sales Representative", "Consultant", "Accountant", "Office Administrator",
              "Designer", "Engineer", "Recruiter")
_TITLES_JUNIOR = ("Student", "Intern", "Freelancer", "Teacher", "Nurse", "Assistant")

_SOURCES: tuple[tuple[str, int], ...] = (
    ("google-ads", 24), ("organic", 26), ("linkedin", 16), ("webinar", 9), ("partner", 7),
    ("trade-show", 6), ("email", 12),
)
_SOURCE_NAMES = tuple(s for s, _ in _SOURCES)
_SOURCE_WEIGHTS = tuple(w for _, w in _SOURCES)

_BASE = "https://example.com"
_BLOG = ("lead-scoring-101", "what-is-an-mql", "crm-migration-checklist",
         "sales-marketing-alignment", "account-based-marketing", "b2b-funnel-metrics",
         "email-nurture-that-works", "routing-leads-fairly", "customer-story-bluewave",
         "pricing-your-saas", "gdpr-for-marketers", "webinar-recap-q1")
_CONTENT = ("wp-roi-calculator", "ebook-lead-scoring-101", "case-study-northwind",
            "report-state-of-sales-2026", "checklist-crm-migration", "guide-abm-playbook",
            "template-sla-handoff")
_DOCS = ("getting-started", "integrations/salesforce", "api/authentication", "billing",
         "sso-setup", "data-export")
_PAGES = ("/product", "/product/integrations", "/product/reporting", "/customers", "/about",
          "/security", "/careers")

_DISQUALIFY = ("wrong contact", "spam", "competitor", "no budget")
_LOSS = ("price", "chose competitor", "no decision", "budget cut", "timing")
_REPS = ("rep-a", "rep-b", "rep-c", "rep-d", "rep-e", "rep-f")
_EMEA = frozenset({"DE", "FR", "NL", "GB", "ES", "IT", "SE", "PL"})
_TARGET = frozenset({"US", "CA", "GB", "DE", "FR", "NL"})
_BOFU = frozenset({"contact-sales", "how-to-buy", "support-question"})

_PERSONAS_B2B: tuple[tuple[str, int], ...] = (
    ("hot", 16), ("researcher", 30), ("tire_kicker", 24), ("zombie", 12),
    ("unsubscriber", 8), ("support", 4), ("spam", 0),
)
_PERSONAS_FREE: tuple[tuple[str, int], ...] = (
    ("hot", 6), ("researcher", 18), ("tire_kicker", 36), ("zombie", 20),
    ("unsubscriber", 13), ("support", 2), ("spam", 5),
)

