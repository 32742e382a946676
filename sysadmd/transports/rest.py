"""REST transport (being written)."""
from twisted.web import resource


class RestResource(resource.Resource):
    isLeaf = True

    def __init__(self, server):
        super().__init__()
        self.server = server

    def render(self, request):
        request.setResponseCode(501)
        return b'{"args":{"code":"501"}}'
